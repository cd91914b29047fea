"""The rule of values a person writes (``cond.<name>=...``): ``parse`` accepts the case's values
and rejects its bad ones with an ``LdmError``."""

from __future__ import annotations

import torch

from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.outputs import check_output


def rule_parse(ctx: Context) -> None:
    texts = ctx.cli_values()
    if not texts:
        raise Broken("the PluginCase gives no cli_values: the kit cannot check how users write "
                      "this condition on the command line (cond.<name>=...).")
    enc = ctx.encoder()
    enc.eval()
    cond = ctx.conditioner(enc)
    parsed = [ctx.run(f"parse({t!r})", lambda t=t: enc.parse(t)) for t in texts]
    value = ctx.run("collate() of parsed values", lambda: enc.collate(parsed))
    with torch.no_grad():
        out = ctx.run("forward() of parsed values", lambda: enc(value))
    check_output(ctx, cond, out, "forward() of parsed values", len(texts))
    for bad in ctx.cli_values(bad=True):
        try:
            enc.parse(bad)
        except LdmError:
            continue
        except Exception as exc:
            raise Broken(f"parse({bad!r}) raised {type(exc).__name__}: {exc}; a value a user "
                          f"can mistype must raise an LdmError (one paragraph, exit status 2).") from None
        raise Broken(f"parse({bad!r}) accepted a value the case lists as invalid.")
