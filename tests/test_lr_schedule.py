"""The trainer's learning-rate schedule against its closed form."""

from __future__ import annotations

import math

import pytest

from ldmcore.config import TrainerConfig
from ldmcore.train import lr_at


def test_warmup_then_constant() -> None:
    tc = TrainerConfig(lr=1e-3, warmup_steps=10, max_steps=100)
    assert lr_at(tc, 0) == pytest.approx(1e-4)
    assert lr_at(tc, 9) == pytest.approx(1e-3)
    assert lr_at(tc, 99) == pytest.approx(1e-3)


def test_cosine_decays_to_zero_at_max_steps() -> None:
    tc = TrainerConfig(lr=1e-3, warmup_steps=10, max_steps=110, lr_schedule="cosine")
    assert lr_at(tc, 4) == pytest.approx(5e-4)  # warmup is the same linear ramp
    assert lr_at(tc, 10) == pytest.approx(1e-3)
    assert lr_at(tc, 60) == pytest.approx(5e-4)  # half way: cos(pi / 2)
    assert lr_at(tc, 35) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(tc, 110) == pytest.approx(0.0, abs=1e-12)
    assert all(lr_at(tc, s) >= lr_at(tc, s + 1) for s in range(10, 120))


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainerConfig(lr_schedule="step")
