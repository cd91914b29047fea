"""The ``residual`` injection: per-level feature maps added to the UNet's encoder (ControlNet,
T2I-Adapter), and how several plugins' maps are checked and summed.

A residual plugin's ``forward`` returns a ``Residual``: what it computed from its value
(``features``), a per-sample ``weight`` (its scale where conditional, 0 where null), and, when
its maps depend on the UNet's own input (ControlNet's trainable copy reads z_t, the timestep and
the context), the ``network`` that makes them from that input in every UNet call. A plugin whose
maps depend on its value only (T2I-Adapter) leaves ``network`` unset: its features, keyed by tap
name, are the maps, computed once per sample instead of once per step.

The null of a residual plugin is "no residual" (weight 0): the backbone alone, which is also
what removing the plugin gives. Where the maps are added (``ldmcore.nn.taps``) and their widths
come from the backbone (``BackboneSpec.residual_taps``); a plugin declares the taps it feeds in
its output spec (``OutputSpec.taps``), and every map is checked against them, naming the plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ldmcore.errors import PluginError
from ldmcore.nn.inserted_layers import EVERY_STEP, StepWindow
from ldmcore.nn.taps import ResidualTap


@dataclass(frozen=True)
class UNetInput:
    """One UNet call's inputs, as a residual network that depends on them reads them."""

    x: torch.Tensor  # z_t joined with the concat conditions
    t: torch.Tensor  # (B,) timesteps
    context: torch.Tensor | None = None
    context_mask: torch.Tensor | None = None
    vector: torch.Tensor | None = None


ResidualNetwork = Callable[[dict[str, torch.Tensor], UNetInput], dict[str, torch.Tensor]]


@dataclass
class Residual:
    """One residual plugin's output for a batch (see the module docstring)."""

    features: dict[str, torch.Tensor]  # batch first; without ``network``: tap name -> map
    weight: torch.Tensor  # (B,): each sample's maps are multiplied by it
    network: ResidualNetwork | None = None
    # where in a sampling run the maps are added (``ldmcore.diffusion.step_windows``); give the
    # same window in ``forward`` and ``null``
    steps: StepWindow = EVERY_STEP

    def maps(self, unet_input: UNetInput | None, taps: Sequence[ResidualTap] = ()) -> dict[str, torch.Tensor]:
        """Tap name -> map for this UNet call, weighted per sample. A network runs only on the
        samples whose weight is not 0 (guidance's unconditional branch, dropped samples): the
        others' maps are zeros of the declared ``taps``' shapes."""
        if self.network is None:
            raw = self.features
        else:
            rows = self._active()
            if rows is None:
                raw = self.network(self.features, unet_input)
            else:
                raw = self._scattered(rows, unet_input, taps)
        return {tap: m * self.weight.to(m).view(-1, *([1] * (m.dim() - 1))) for tap, m in raw.items()}

    def _active(self) -> torch.Tensor | None:
        """Indices of the samples with a non-zero weight, or None when that is every sample
        (found once per output: a sampler reuses one conditioning for every step)."""
        if not hasattr(self, "_rows"):
            rows = torch.nonzero(self.weight != 0).flatten()
            self._rows = None if len(rows) == len(self.weight) else rows
        return self._rows

    def _scattered(self, rows: torch.Tensor, unet_input: UNetInput, taps: Sequence[ResidualTap]
                   ) -> dict[str, torch.Tensor]:
        def take(v: torch.Tensor | None) -> torch.Tensor | None:
            return None if v is None else v[rows]

        batch = len(self.weight)
        like = unet_input.x
        out = {tap.name: torch.zeros(batch, *tap.shape, dtype=like.dtype, device=like.device)
               for tap in taps}
        if len(rows):
            sub = UNetInput(*(take(getattr(unet_input, f)) for f in ("x", "t", "context",
                                                                    "context_mask", "vector")))
            for tap, m in self.network({k: v[rows] for k, v in self.features.items()}, sub).items():
                out[tap] = out[tap].to(m.dtype).index_copy(0, rows, m) if tap in out else m
        return out

    def where(self, cond: torch.Tensor, other: Residual) -> Residual:
        """Per sample: this output where ``cond`` is True, else ``other`` (train-time dropout)."""
        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(cond.view(-1, *([1] * (b.dim() - 1))), a.to(b.dtype), b)

        return Residual({k: pick(v, other.features[k]) for k, v in self.features.items()},
                        pick(self.weight, other.weight), other.network, other.steps)

    @staticmethod
    def cat(parts: Sequence[Residual]) -> Residual:
        """Several batches of one plugin's output joined along the batch axis."""
        return Residual({k: torch.cat([p.features[k] for p in parts]) for k in parts[0].features},
                        torch.cat([p.weight for p in parts]), parts[0].network, parts[0].steps)


@dataclass
class Residuals:
    """Every residual plugin's output for one UNet call, in enabling order, with the taps each
    declared; ``maps`` checks and sums them."""

    parts: dict[str, Residual]  # plugin -> its output
    taps: dict[str, tuple[ResidualTap, ...]]  # plugin -> the taps its output spec declares

    def maps(self, unet_input: UNetInput) -> dict[str, torch.Tensor]:
        """Tap name -> the sum of every plugin's map there."""
        total: dict[str, torch.Tensor] = {}
        batch = unet_input.x.shape[0]
        for name, part in self.parts.items():
            maps = part.maps(unet_input, self.taps[name])
            check_maps(name, maps, self.taps[name], batch)
            for tap, m in maps.items():
                total[tap] = m if tap not in total else total[tap] + m
        return total

    @staticmethod
    def cat(parts: Sequence[Residuals]) -> Residuals:
        """Batches of conditionings joined (guidance's branches run as one batch)."""
        return Residuals({name: Residual.cat([p.parts[name] for p in parts]) for name in parts[0].parts},
                         parts[0].taps)


def check_maps(plugin: str, maps: dict[str, torch.Tensor], taps: Sequence[ResidualTap],
               batch: int) -> None:
    """``maps`` are exactly the declared ``taps``, each (batch, *tap.shape)."""
    declared = {tap.name: tap for tap in taps}
    if set(maps) != set(declared):
        raise PluginError(f"plugin {plugin!r} made residual maps for the taps {sorted(maps)} but "
                          f"its output spec declares {sorted(declared)}; return one map per "
                          f"declared tap.")
    for name, m in maps.items():
        want = (batch, *declared[name].shape)
        if tuple(m.shape) != want:
            raise PluginError(f"plugin {plugin!r} made a residual map of shape {tuple(m.shape)} "
                              f"for tap {name!r}, which takes {want} (channels and size of the "
                              f"UNet's features there).")


def check_residual_spec(plugin: str, taps: Sequence[ResidualTap],
                        backbone_taps: Sequence[ResidualTap]) -> None:
    """The taps a plugin declares exist in this backbone with the widths and sizes it says."""
    if not taps:
        raise PluginError(f"plugin {plugin!r}: its residual output spec declares no taps; name "
                          f"the taps it feeds from BackboneSpec.residual_taps "
                          f"(OutputSpec(Injection.RESIDUAL, (), taps=...)).")
    known = {tap.name: tap for tap in backbone_taps}
    for tap in taps:
        if tap.name not in known:
            raise PluginError(f"plugin {plugin!r} feeds the residual tap {tap.name!r}, which this "
                              f"backbone does not have; its taps are {', '.join(known) or 'none'}.")
        if tap != known[tap.name]:
            raise PluginError(f"plugin {plugin!r} declares tap {tap.name!r} as {tap}, but the "
                              f"backbone's is {known[tap.name]}; take the taps from "
                              f"BackboneSpec.residual_taps instead of restating them.")


def check_residual_output(plugin: str, value: Residual, taps: Sequence[ResidualTap], method: str
                          ) -> None:
    """A residual output is a ``Residual`` whose weight and features have one row per sample,
    and whose features are the declared maps when it has no network."""
    if not isinstance(value, Residual):
        raise PluginError(f"plugin {plugin!r} {method} returned {type(value).__name__} for "
                          f"residual; return ldmcore.conditioning.Residual(features, weight, "
                          f"network).")
    batch = value.weight.shape[0]
    if value.weight.dim() != 1:
        raise PluginError(f"plugin {plugin!r} {method} returned a residual weight of shape "
                          f"{tuple(value.weight.shape)}; it must be (batch,).")
    rows = {k: v.shape[0] for k, v in value.features.items() if v.shape[0] != batch}
    if rows:
        raise PluginError(f"plugin {plugin!r} {method} returned residual features {rows} rows "
                          f"for a weight of {batch}; every feature tensor is batch first.")
    if value.network is None:
        check_maps(plugin, value.features, taps, batch)
