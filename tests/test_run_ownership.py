"""ldmcore writes only into folders it made: ``overwrite=true`` replaces a marked run folder
and refuses anything else, ``ldm sample out=`` leaves a user's files alone unless told, a failed
replacement gives the old run back, and a path read from a checkpoint cannot lead outside its
run.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
from ldm_text.encoder import default_model_dir
from PIL import Image

from ldmcore import checkpoint
from ldmcore.runfolder import MARKER, SAMPLES_MARKER
from tests.reliability import rewrite_checkpoint, run_cli
from tests.test_bad_input import refused, sample


def stage2(run: Path, trained: Path, *extra: str) -> list[str]:
    return ["train", "experiment=smoke", f"run_dir={run}", "trainer.precision=fp32", "trainer.max_steps=1",
            f"autoencoder.checkpoint={trained / 'checkpoints' / 'autoencoder.safetensors'}", *extra]


def test_overwrite_refuses_a_folder_ldmcore_did_not_make(tmp_path, trained_run):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "thesis.tex").write_text("\\chapter{Years of work}")
    refused(tmp_path, *stage2(mine, trained_run, "overwrite=true"),
            words=("not a run folder made by ldmcore", "'thesis.tex'"))
    refused(tmp_path, *stage2(mine, trained_run, "resume=true"), words=("'thesis.tex'",))
    refused(tmp_path, "import", str(tmp_path / "model.safetensors"), str(mine), "overwrite=true",
            words=("OUT_DIR", "'thesis.tex'"))


def test_overwrite_replaces_a_run_folder(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "checkpoints" / "step_3.safetensors").unlink()
    out = run_cli(*stage2(run, trained_run, "overwrite=true"))
    assert out.code == 0, out.escaped or out.stderr
    assert checkpoint.load(run / "checkpoints" / "last.safetensors")[1]["step"] == 1
    assert (run / MARKER).is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_overwrite_gives_the_old_run_back(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    broken = tmp_path / "ae.safetensors"
    broken.write_bytes(b"\x00" * 64)
    # the lock file records the last process that held it; everything else is as it was
    refused(tmp_path, *stage2(run, trained_run, "overwrite=true", f"autoencoder.checkpoint={broken}"),
            words=("ae.safetensors",), ignore=(".lock",))


def test_sample_leaves_a_users_folder_alone_unless_told(tmp_path, trained_run):
    out = tmp_path / "pictures"
    out.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(out / "0000.png")
    refused(tmp_path, *sample(trained_run, f"out={out}", "cond.class=3"),
            words=("'0000.png'", "overwrite=true"))
    assert run_cli(*sample(trained_run, f"out={out}", "cond.class=3", "overwrite=true")).code == 0
    assert np.asarray(Image.open(out / "0000.png")).shape == (16, 16)  # replaced, as asked


def test_sample_writes_again_into_a_folder_it_made(tmp_path, trained_run):
    out = tmp_path / "samples"
    assert run_cli(*sample(trained_run, f"out={out}", "cond.class=3")).code == 0
    assert (out / SAMPLES_MARKER).is_file()
    assert run_cli(*sample(trained_run, f"out={out}", "cond.class=[1,2]")).code == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["0000.png", "0001.png", "0002.png", "0003.png",
                                                         "grid.png"]


def test_a_folder_inside_a_run_folder_is_ldmcores(tmp_path, trained_run):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    older = run / "samples" / "sample_0"  # as an older ldmcore left it: no marker
    older.mkdir()
    (older / "0000.png").write_bytes(b"")
    assert run_cli(*sample(run, "cond.class=3")).code == 0
    assert np.asarray(Image.open(older / "0000.png")).shape == (16, 16)


def test_a_path_in_checkpoint_metadata_cannot_lead_outside_the_run(tmp_path, trained_run):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for named in (str(outside), "../elsewhere"):
        run = tmp_path / "run"
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(trained_run, run)
        rewrite_checkpoint(run / "checkpoints" / "last.safetensors", change_meta=lambda m: m["config"].update(
            conditions={"text": {"model": named}}))
        refused(tmp_path, *sample(run, "cond.text=hello"),
                words=(f"conditions.text.model='{named}'", "outside the run folder", "conditions.text.model=PATH"))
        # the user may name the same folder: then it is followed (and found not to be a model)
        refused(tmp_path, *sample(run, "cond.text=hello", f"conditions.text.model={outside}"),
                words=("is not a transformers model",))


class _Payload:
    """Unpickling this would create the file ``path``: proof that a pickle was executed."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_text_encoder_folder_with_pickled_weights_is_refused_unloaded(tmp_path, trained_run):
    folder = tmp_path / "encoder"
    shutil.copytree(default_model_dir(), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    executed = tmp_path / "executed"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Payload(executed)))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    rewrite_checkpoint(run / "checkpoints" / "last.safetensors", change_meta=lambda m: m["config"].update(
        conditions={"text": {"model": "encoder"}}))
    refused(tmp_path, *sample(run, "cond.text=hello", f"conditions.text.model={folder}"),
            words=("no .safetensors weights", "pytorch_model.bin"))
    assert not executed.exists()
