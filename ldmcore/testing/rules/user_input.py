"""Rules of values a person gives: ``parse`` accepts the case's values (``cond.<name>=...``) and
rejects its bad ones with an ``LdmError``, and every value the web page's widget can send
parses."""

from __future__ import annotations

import json

import torch

from ldmcore.conditioning import FILE_KINDS, Widget, WidgetKind, read_value
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


def rule_widget(ctx: Context) -> None:
    enc = ctx.encoder()
    widget = ctx.run("widget()", enc.widget)
    if widget is None:
        return  # the page shows a text field, read as the command line reads cond.<name>=
    if not isinstance(widget, Widget) or not isinstance(widget.kind, WidgetKind):
        raise Broken(f"widget() returned {widget!r}; return a ldmcore.conditioning.Widget with a "
                      f"WidgetKind, or None for a text field.")
    kind = widget.kind
    if kind in (WidgetKind.CHOICE, WidgetKind.BOXES, WidgetKind.LABEL_MAP) and not widget.choices:
        raise Broken(f"a {kind.value} widget needs its choices (the names a person picks from).")
    needs_size = kind in (WidgetKind.LABEL_MAP, WidgetKind.IMAGE_MASK)
    size = widget.size
    if (needs_size and size is None) or (size is not None and (
            len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size))):
        raise Broken(f"widget size={size!r}: give (height, width) in pixels"
                      f"{' (a painted input needs one)' if needs_size else ''}.")
    slots = {"{image}", "{mask}"} if kind is WidgetKind.IMAGE_MASK else {"{image}"}
    if kind in FILE_KINDS and not all(slot in widget.value for slot in slots):
        raise Broken(f"widget value={widget.value!r} must hold {' and '.join(sorted(slots))}: the "
                      f"paths of the files the page sends.")
    texts = []  # what the page can send: every choice, a box of each class, the default text
    if kind is WidgetKind.CHOICE:
        texts = list(widget.choices)
    elif kind is WidgetKind.BOXES:
        texts = [json.dumps([[0.1, 0.2, 0.6, 0.7, name]]) for name in widget.choices]
    elif kind is WidgetKind.TEXT and widget.default:
        texts = [widget.default]
    if kind is WidgetKind.CHOICE and widget.default and widget.default not in widget.choices:
        raise Broken(f"widget default={widget.default!r} is not one of its choices.")
    for text in texts:
        try:
            enc.parse(read_value(text))
        except Exception as exc:  # noqa: BLE001 - any failure is the rule's finding
            raise Broken(f"the page can send cond.{ctx.case.name}={text!r} (the widget offers it), "
                          f"but parse refuses it: {type(exc).__name__}: {exc}") from None
