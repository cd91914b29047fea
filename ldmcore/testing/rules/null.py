"""Rules of the unconditional value: ``null()`` itself, and training-time dropout to it."""

from __future__ import annotations

import torch

from ldmcore.conditioning import ConditionEncoder
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context
from ldmcore.testing.outputs import batch_size_of, check_output, output_row, routed_parts, same_output


def rule_null(ctx: Context) -> None:
    enc = ctx.encoder()
    cond = ctx.conditioner(enc)
    enc.eval()
    if type(enc).null is ConditionEncoder.null:
        raise Broken("null() is missing: every condition needs an unconditional value for "
                      "classifier-free guidance (a learned null token, or zeros).")
    b = 3
    out = ctx.run("null()", lambda: enc.null(b))
    check_output(ctx, cond, out, "null()", b)
    one = ctx.run("null()", lambda: enc.null(1))
    if not all(same_output(output_row(out, i), one, atol=1e-5) for i in range(b)):  # batched rounding
        raise Broken("null(3) is not null(1) repeated: the unconditional value must be the "
                      "same for every sample.")
    if not same_output(out, enc.null(b)):
        raise Broken("two calls of null() differ; it must be deterministic.")


def rule_dropout(ctx: Context) -> None:
    enc = ctx.encoder()
    enc.eval()
    batch = ctx.batch()
    b = batch_size_of(batch)
    name = ctx.case.name
    value = ctx.value(enc)
    conditional = ctx.run("forward()", lambda: enc(value))
    null = ctx.run("null()", lambda: enc.null(b))
    for p, expected, word in ((1.0, null, "its null"), (0.0, conditional, "its forward()")):
        other = ctx.encoder(drop_prob=p)
        other.load_state_dict(enc.state_dict())
        other.eval()
        cond = ctx.conditioner(other)
        got = ctx.run("dropout", lambda: cond({**batch, name: value}, b, drop=True,
                                              generator=torch.Generator().manual_seed(0)))
        want = cond.route({name: expected})
        routed_got, routed_want = routed_parts(got, name), routed_parts(want, name)
        for part in routed_want:
            x, y = routed_got.get(part), routed_want[part]
            if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
                raise Broken(f"with drop_prob={p} training-time dropout did not give exactly "
                              f"{word} ({part} differs).")
