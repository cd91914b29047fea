"""Checkpoint I/O (ldmcore/checkpoint.py): safetensors only, atomic writes, clear errors.

Round trips compare bit for bit; the optimizer round trip is judged by what matters, the next
step: a restored AdamW must move the parameters exactly as the uninterrupted one does.
"""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ldmcore import checkpoint
from ldmcore.errors import CheckpointError


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "unet.w": torch.randn(3, 5, generator=g),
        "unet.half": torch.randn(4, generator=g).to(torch.bfloat16),
        "ema.w": torch.randn(3, 5, generator=g).double(),
        "step": torch.tensor(17),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "transposed": torch.arange(6.0).view(2, 3).t(),  # not contiguous
    }


def assert_tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def test_round_trip_of_tensors_and_json_metadata(tmp_path):
    meta = {"config": {"trainer": {"lr": 2e-4, "betas": [0.9, 0.999]}, "name": "demo"},
            "step": 1234, "kind": "latent_diffusion", "plugins": {}, "note": None, "ok": True}
    path = tmp_path / "deep" / "folder" / "last.safetensors"  # parents are created
    checkpoint.save(path, tensors(), meta)
    got, got_meta = checkpoint.load(path)
    assert_tensors_equal(got, tensors())
    assert got_meta == meta


def test_tensors_sharing_storage_are_saved_as_their_values(tmp_path):
    base = torch.arange(6.0)
    shared = {"a": base, "a_again": base, "head": base[:3], "tail": base[3:]}
    checkpoint.save(tmp_path / "x.safetensors", shared)
    got, _ = checkpoint.load(tmp_path / "x.safetensors")
    assert_tensors_equal(got, {k: v.clone() for k, v in shared.items()})


def test_a_plain_safetensors_file_with_foreign_metadata_loads(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(path), metadata={"format": "pt"})  # not JSON
    got, meta = checkpoint.load(path)
    assert torch.equal(got["w"], torch.ones(2)) and meta == {"format": "pt"}


def test_prefix_helpers_are_inverse():
    state = {"a.b": torch.ones(1), "c": torch.zeros(1)}
    joined = {**checkpoint.with_prefix("unet.", state), "ema.x": torch.ones(1)}
    assert set(joined) == {"unet.a.b", "unet.c", "ema.x"}
    assert_tensors_equal(checkpoint.strip_prefix("unet.", joined), state)


# -- optimizer state --------------------------------------------------------------------------

def model_and_opt(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    frozen_bias = model[2].bias  # gets no gradient: has no optimizer state at all
    frozen_bias.requires_grad_(False)
    opt = torch.optim.AdamW([{"params": [model[0].weight, model[0].bias], "lr": 1e-2},
                             {"params": [model[2].weight, frozen_bias], "lr": 3e-3,
                              "weight_decay": 0.1}], betas=(0.8, 0.95))
    return model, opt


def step(model, opt, i: int) -> None:
    g = torch.Generator().manual_seed(100 + i)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


def test_restored_adamw_takes_the_identical_next_step(tmp_path):
    model, opt = model_and_opt()
    for i in range(3):
        step(model, opt, i)
    opt_tensors, opt_meta = checkpoint.optimizer_state(opt)
    checkpoint.save(tmp_path / "c.safetensors",
                    {**checkpoint.with_prefix("model.", model.state_dict()), **opt_tensors},
                    {"optimizer": opt_meta})

    loaded, meta = checkpoint.load(tmp_path / "c.safetensors")
    model2, opt2 = model_and_opt(seed=1)  # different initial weights: everything must come back
    checkpoint.load_into(model2, checkpoint.strip_prefix("model.", loaded), "model", "c")
    checkpoint.restore_optimizer(opt2, loaded, meta["optimizer"])
    assert opt2.param_groups[1]["weight_decay"] == 0.1 and opt2.param_groups[0]["lr"] == 1e-2

    for i in range(3, 5):
        step(model, opt, i)
        step(model2, opt2, i)
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    # and the moments themselves match
    for p, q in zip(model.parameters(), model2.parameters()):
        for key in opt.state.get(p, {}):
            assert torch.equal(torch.as_tensor(opt.state[p][key]), torch.as_tensor(opt2.state[q][key]))


# -- unreadable files -------------------------------------------------------------------------

def assert_clear(exc: pytest.ExceptionInfo, path, *words: str) -> None:
    text = str(exc.value)
    assert str(path) in text
    for w in words:
        assert w in text
    assert "\n" not in text


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load(tmp_path / "nope.safetensors")
    assert_clear(exc, tmp_path / "nope.safetensors", "does not exist")


@pytest.mark.parametrize("keep", [0, 4, 20, -7])  # empty, half a header length, inside header, data
def test_truncated_file(tmp_path, keep):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, tensors(), {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load(path)
    assert_clear(exc, path, "truncated")


class Evil:
    """A pickle that creates a file when unpickled: loading must never unpickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["model.safetensors", "model.ckpt", "model.pt"])
@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_pickle_is_refused_and_never_unpickled(tmp_path, name, how):
    path, marker = tmp_path / name, tmp_path / "pwned"
    payload = {"state_dict": {"w": torch.ones(2)}, "x": Evil(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load(path)
    assert_clear(exc, path, "safetensors")
    assert not marker.exists()


def test_a_ckpt_file_gets_told_to_convert(tmp_path):
    path = tmp_path / "sd-v1-4.ckpt"
    save_file({"w": torch.ones(1)}, str(path))  # even valid safetensors bytes: the name decides
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load(path)
    assert_clear(exc, path, "pickle", "Convert")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load(path)
    assert_clear(exc, path, "safetensors")


# -- atomic writes ----------------------------------------------------------------------------

# safetensors reports a full disk as its own error type, not as an OSError
@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     SafetensorError("Error while serializing: I/O error: No space "
                                                     "left on device (os error 28)")])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch, failure):
    path = tmp_path / "last.safetensors"
    old = {"w": torch.ones(3)}
    checkpoint.save(path, old, {"step": 1})

    def half_written(flat, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"\x10\x00\x00\x00\x00\x00\x00\x00{partial")  # torn bytes, then a crash
        raise failure

    monkeypatch.setattr(checkpoint, "save_file", half_written)
    with pytest.raises(CheckpointError, match="No space left on device") as exc:
        checkpoint.save(path, {"w": torch.zeros(1000)}, {"step": 2})
    # the message names the disk, its free space and what the checkpoint needs (4000 bytes)
    assert f"disk holding {str(tmp_path)!r} has" in str(exc.value)
    assert "needs about 3.9 KB" in str(exc.value)
    got, meta = checkpoint.load(path)
    assert_tensors_equal(got, old)
    assert meta == {"step": 1}
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors"]


def test_a_failed_rename_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, {"w": torch.ones(3)})

    def refuse(src, dst):
        raise PermissionError("read-only")

    monkeypatch.setattr(checkpoint.os, "replace", refuse)
    with pytest.raises(CheckpointError, match="read-only"):
        checkpoint.save(path, {"w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)[0]["w"], torch.ones(3))
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors"]


def test_a_successful_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "last.safetensors"
    checkpoint.save(path, {"w": torch.ones(3)}, {"step": 1})
    checkpoint.save(path, {"v": torch.zeros(2)}, {"step": 2})
    got, meta = checkpoint.load(path)
    assert_tensors_equal(got, {"v": torch.zeros(2)})
    assert meta == {"step": 2}
    assert sorted(os.listdir(tmp_path)) == ["last.safetensors"]


# -- loading into a module --------------------------------------------------------------------

def test_load_into_reports_missing_unexpected_and_mis_shaped_keys():
    module = torch.nn.Linear(3, 4)
    state = {"weight": torch.zeros(4, 2), "extra.scale": torch.ones(1)}
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load_into(module, state, "unet", "runs/x/last.safetensors")
    text = str(exc.value)
    assert "unet" in text and "runs/x/last.safetensors" in text
    assert "1 missing: bias" in text
    assert "1 unexpected: extra.scale" in text
    assert "weight (4, 2) vs (4, 3)" in text


def test_load_into_shortens_long_key_lists():
    module = torch.nn.Sequential(*[torch.nn.Linear(2, 2) for _ in range(3)])  # 6 tensors
    with pytest.raises(CheckpointError) as exc:
        checkpoint.load_into(module, {}, "model", "p")
    assert "(and 2 more)" in str(exc.value)


def test_load_into_copies_a_fitting_state():
    source, target = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    checkpoint.load_into(target, {k: v.clone() for k, v in source.state_dict().items()}, "m", "p")
    assert_tensors_equal(target.state_dict(), source.state_dict())


def test_an_empty_checkpoint_round_trips(tmp_path):
    checkpoint.save(tmp_path / "empty.safetensors", {})
    assert checkpoint.load(tmp_path / "empty.safetensors") == ({}, {})
