"""Reading and comparing a plugin's outputs (``ConditionOutput``): checks against the spec,
equality, single rows, and what a routed ``Conditioning`` hands the UNet."""

from __future__ import annotations

from typing import Any

import torch

from ldmcore.conditioning import (ConditionOutput, Conditioner, Conditioning, Injection, Residual,
                                  Tokens)
from ldmcore.errors import LdmError
from ldmcore.testing.case import Broken
from ldmcore.testing.context import Context


def output_parts(out: ConditionOutput) -> dict[Injection, tuple[torch.Tensor, torch.Tensor | None]]:
    """Each output as (tensor, mask); a residual output as its features and weight, flattened
    per sample into one tensor."""
    def part(v: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        if isinstance(v, Tokens):
            return v.values, v.mask
        return (flat_residual(v), None) if isinstance(v, Residual) else (v, None)

    return {inj: part(v) for inj, v in out.items()}


def flat_residual(r: Residual) -> torch.Tensor:
    return torch.cat([f.flatten(1).float() for f in r.features.values()] + [r.weight[:, None].float()], 1)


def check_output(ctx: Context, cond: Conditioner, out: Any, what: str, batch_size: int) -> None:
    """Keys, per-sample shapes, batch size, dtype, finiteness and masks against the spec."""
    name = ctx.case.name
    if not isinstance(out, dict):
        raise Broken(f"{what} returned {type(out).__name__}; it must return a dict "
                      f"{{Injection: tensor or Tokens}}.")
    try:
        cond._check_output(name, out, what)
    except LdmError as err:
        raise Broken(str(err)) from None
    for inj, val in out.items():
        if takes_tokens(inj) != isinstance(val, Tokens) or (
                (inj is Injection.RESIDUAL) != isinstance(val, Residual)):
            raise Broken(f"{what} returned {type(val).__name__} for {inj.value}; token outputs "
                          f"(crossattn, gated_attention, decoupled_crossattn) are Tokens(values, "
                          f"mask), residual outputs Residual(features, weight, network), concat "
                          f"and vector outputs tensors.")
        tensor, mask = output_parts({inj: val})[inj]
        if tensor.shape[0] != batch_size:
            raise Broken(f"{what} returned {inj.value} for {tensor.shape[0]} samples; the batch "
                          f"has {batch_size}.")
        if not tensor.is_floating_point():
            raise Broken(f"{what} returned {inj.value} of dtype {tensor.dtype}; outputs must be "
                          f"floating point.")
        if not torch.isfinite(tensor).all():
            raise Broken(f"{what} returned non-finite values for {inj.value}.")
        if mask is not None and not mask.any(dim=1).all():
            raise Broken(f"{what} returned a key-padding mask with a sample attending no token; "
                          f"attention over nothing is NaN - keep at least one token True.")


def takes_tokens(inj: Injection) -> bool:
    return inj is Injection.CROSSATTN or inj.inserts_layers


def routed_parts(cond: Conditioning, name: str) -> dict[str, torch.Tensor | None]:
    """Every tensor a routed Conditioning hands the UNet, by name (plugin ``name``'s residuals)."""
    parts = {p: getattr(cond, p) for p in ("context", "context_mask", "concat", "vector")}
    parts["residuals"] = None if cond.residuals is None else flat_residual(cond.residuals.parts[name])
    inserted = cond.inserted
    for kind in ("gated", "decoupled"):
        for i, t in enumerate(getattr(inserted, kind) if inserted is not None else ()):
            parts.update({f"{kind}[{i}].tokens": t.tokens, f"{kind}[{i}].mask": t.mask,
                          f"{kind}[{i}].region": getattr(t, "region", None)})
    return parts


def same_output(a: ConditionOutput, b: ConditionOutput, atol: float = 0.0) -> bool:
    pa, pb = output_parts(a), output_parts(b)
    if set(pa) != set(pb):
        return False
    for inj in pa:
        (ta, ma), (tb, mb) = pa[inj], pb[inj]
        if ta.shape != tb.shape or not torch.allclose(ta.float(), tb.float(), atol=atol, rtol=0):
            return False
        if (ma is None) != (mb is None) or (ma is not None and not torch.equal(ma, mb)):
            return False
    return True


def output_row(out: ConditionOutput, i: int) -> ConditionOutput:
    return {inj: Tokens(v.values[i:i + 1], v.mask[i:i + 1]) if isinstance(v, Tokens) else
            Residual({k: f[i:i + 1] for k, f in v.features.items()}, v.weight[i:i + 1], v.network)
            if isinstance(v, Residual) else v[i:i + 1] for inj, v in out.items()}


def batch_size_of(batch: dict[str, Any]) -> int:
    return len(next(iter(batch.values())))
