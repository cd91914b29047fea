"""Hypothesis strategies for every input a user controls, and the targets they are fed to.

Each target takes one generated input and returns its verdict: ``"accepted"`` (valid, and what
was accepted holds only finite numbers), ``"refused"`` (an ``LdmError``: the user is told what
is wrong), or ``"escaped: ..."`` (any other exception, which a user would see as a traceback: a
bug). ``tests/test_fuzz.py`` asserts that nothing escapes with a few examples per target;
``python -m benchmarks.reliability`` runs many and counts.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from hypothesis import strategies as st

from ldmcore import checkpoint
from ldmcore.build import check_shapes
from ldmcore.conditioning import BackboneSpec
from ldmcore.config import load
from ldmcore.errors import LdmError
from ldmcore.registry import default_registry
from ldmcore.runfolder import load_run
from ldmcore.sample import condition_rows, parse_request, parse_values

# -- values as a user types them ---------------------------------------------------------------
numbers = st.one_of(st.integers(-2**40, 2**40).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr),
                    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e999", "-0", "0x10", "1_000"]))
lists = st.lists(st.integers(-3, 2**20), max_size=6).map(lambda v: json.dumps(v).replace(" ", ""))
broken_lists = st.sampled_from(["[", "[0,1,", "[[0]", "[]", "[[]]", "[,]", "]", "[0,[1,2]]", "{}",
                                "[a b]", "['x',1]", "[0;1]"])
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
values = st.one_of(numbers, lists, broken_lists, words,
                   st.sampled_from(["", "null", "true", "${oops}", "???", "'", '"', "=", "a=b",
                                    "/proc/x", "../../x", "\x00", "\u202e", "é" * 3]))

# -- ldm train: config overrides ---------------------------------------------------------------
CONFIG_KEYS = [
    "trainer.lr", "trainer.batch_size", "trainer.betas", "trainer.max_steps", "trainer.grad_clip",
    "trainer.ema_decay", "trainer.warmup_steps", "trainer.grad_accum", "trainer.precision",
    "trainer.stop_signals", "data.image_size", "data.limit", "data.shift", "data.channels",
    "autoencoder.ch_mult", "autoencoder.latent_channels", "autoencoder.ch", "autoencoder.norm_groups",
    "model.unet.channel_mult", "model.unet.model_channels", "model.unet.attention_levels",
    "model.unet.norm_groups", "model.unet.context_dim", "model.diffusion.timesteps",
    "model.diffusion.beta_start", "model.diffusion.beta_end", "sampler.steps", "sampler.guidance",
    "sampler.eta", "sampler.rho", "sampler.name", "sampler.guidance_interval", "name", "seed",
    "conditions.class.num_classes", "conditions.class.drop_prob", "trainer.lrr", "data.nme",
]
overrides = st.lists(st.tuples(st.sampled_from(CONFIG_KEYS), values).map("=".join),
                     min_size=1, max_size=3)


def verdict(run: Callable[[], Any]) -> str:
    try:
        accepted = run()
    except LdmError as err:
        return "refused" if str(err).strip() else "escaped: an empty message"
    except Exception as exc:  # noqa: BLE001 - the escape is what is being measured
        return f"escaped: {type(exc).__name__}: {exc}"[:300]
    return "accepted" if finite(accepted) else "escaped: accepted a non-finite number"


def finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a (nested) value."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(finite(v) for v in value)
    return True


def train_config(words_: list[str]) -> str:
    """What ``ldm train`` decides before touching the disk: compose, validate, shape rules."""
    def run():
        cfg = load(["experiment=smoke", *words_])
        check_shapes(cfg)
        return cfg.model_dump(mode="python")
    return verdict(run)


# -- ldm sample: the request ---------------------------------------------------------------------
SAMPLE_KEYS = ["n", "steps", "sampler", "sigmas", "spacing", "rho", "eta", "s_noise", "guidance",
               "guidance_rescale", "guidance_interval", "strength", "seed", "batch", "precision",
               "ema", "overwrite", "guidance.class", "option.s_churn", "stepz", "cond.class"]
sample_words = st.lists(st.tuples(st.sampled_from(SAMPLE_KEYS), values).map("=".join), max_size=4)


def sample_request(words_: list[str]) -> str:
    return verdict(lambda: parse_request(["run=runs/x", *words_]).model_dump())


# -- condition values, through each plugin's parse -------------------------------------------------
def _pooled_latents(images: torch.Tensor) -> torch.Tensor:
    """Stands in for the frozen autoencoder: 4 channels of average-pooled pixels (f = 4)."""
    pooled = torch.nn.functional.avg_pool2d(images, 4)
    return torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)


SPEC = BackboneSpec(latent_channels=4, latent_size=(8, 8), context_dim=32, image_channels=3,
                    image_size=(32, 32), encode=_pooled_latents)


def plugin_encoders() -> dict[str, Any]:
    """One encoder per registered plugin that builds from its default config (each is fed
    values by the condition-value target); plugins that need more config are left out."""
    built = {}
    for name, cls in default_registry().encoders.items():
        try:
            built[name] = cls(cls.Config(), SPEC)
        except LdmError:
            continue
    return built


condition_texts = st.one_of(values, st.lists(values, max_size=3).map(json.dumps),
                            st.sampled_from(["[[0.1,0.1,0.5,0.5,0]]", "[[0.1,NaN,0.5,0.5,0]]",
                                             "[[0,0,1,1,\"circle\"]]", "[[1,2,3]]", "3", "[0,1,2]",
                                             "/nonexistent.png", "/etc/passwd", "[\"a\",\"b\"]"]))


def condition_value(encoders: dict[str, Any], name: str, text: str) -> str:
    """``cond.NAME=TEXT`` as ``ldm sample`` reads it: rows of a list, then the plugin's parse."""
    model = SimpleNamespace(conditioner=SimpleNamespace(encoders={name: encoders[name]}))
    return verdict(lambda: parse_values(encoders, condition_rows(model, {name: text})))


# -- checkpoints: bytes and metadata -------------------------------------------------------------
def small_checkpoint(path: Path) -> bytes:
    checkpoint.save(path, {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "n": torch.ones(2, dtype=torch.int64)},
                    {"kind": "latent_diffusion", "step": 3})
    return path.read_bytes()


@dataclass
class Mutation:
    """A change to a safetensors file: truncate, flip bytes, or replace its JSON header."""

    cut: int | None
    flips: list[tuple[int, int]]
    header: Any

    def apply(self, data: bytes) -> bytes:
        if self.header is not None:
            head = json.dumps(self.header).encode()
            data = struct.pack("<Q", len(head)) + head + data[8 + struct.unpack("<Q", data[:8])[0]:]
        out = bytearray(data)
        for pos, byte in self.flips:
            out[pos % len(out)] = byte
        return bytes(out[: self.cut]) if self.cut is not None else bytes(out)


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), words,
                                     st.floats(allow_nan=False)),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
                           max_leaves=8)
headers = st.one_of(st.none(), json_values, st.fixed_dictionaries({
    "w": st.fixed_dictionaries({"dtype": st.sampled_from(["F32", "F16", "I64", "X9", ""]),
                                "shape": st.lists(st.integers(-2, 2**40), max_size=3),
                                "data_offsets": st.lists(st.integers(-5, 2**40), max_size=3)}),
    "__metadata__": st.dictionaries(words, words | json_values.map(json.dumps), max_size=3)}))
mutations = st.builds(Mutation, st.none() | st.integers(0, 400),
                      st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4), headers)


def checkpoint_bytes(folder: Path, original: bytes, mutation: Mutation) -> str:
    path = folder / "fuzzed.safetensors"
    path.write_bytes(mutation.apply(original))
    return verdict(lambda: checkpoint.load(path)[0])


metadata = st.fixed_dictionaries({}, optional={
    "kind": st.sampled_from(["latent_diffusion", "autoencoder", ""]) | words,
    "step": json_values, "optimizer": json_values, "config": json_values,
    "format": words})


def checkpoint_metadata(run: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                        change: dict[str, Any]) -> str:
    """A run whose checkpoint metadata is replaced in part: loading it for sampling and for a
    resume must either work or be refused."""
    checkpoint.save(run / "checkpoints" / "last.safetensors", tensors, {**meta, **change})

    def run_both():
        t, m = checkpoint.load(run / "checkpoints" / "last.safetensors")
        checkpoint.require_training_state(t, m, "last")
        load_run(run)
    return verdict(run_both)
