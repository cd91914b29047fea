"""Reliability figures: fuzz cases tried / handled cleanly per input, and SIGKILL resumes.

    python -m benchmarks.reliability [--examples 1000] [--kills 20] [--steps 50] [--variant NAME]

Fuzz: every target of ``tests/fuzz_targets.py`` fed ``--examples`` Hypothesis examples (random,
not the derandomized few of ``make test``); a case is clean when it is accepted with finite
numbers only, or refused with an ``LdmError``. Kills: a smoke run trained with ``--kills``
SIGKILLs (every other one mid-checkpoint-write) and resumed each time, compared tensor by tensor
with the same run uninterrupted (float32). The fuzz targets and the kill harness are the tests'
own (``tests.fuzz_targets``, ``tests.reliability``): this benchmark runs them at a size CI does
not. Writes ``benchmarks/results/reliability/<variant>.json`` (variant ``full`` unless named).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from benchmarks.support.results import machine, result_paths  # noqa: E402
from ldmcore import checkpoint  # noqa: E402
from ldmcore.config import load  # noqa: E402
from ldmcore.train import train  # noqa: E402
from tests import fuzz_targets as fz  # noqa: E402
from tests.reliability import same_weights, temp_files, train_with_kills  # noqa: E402


def count(strategy, target, examples: int) -> dict:
    """Feed ``examples`` generated inputs to ``target``; tally verdicts, keep a few escapes."""
    tally: collections.Counter = collections.Counter()
    escapes: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def feed(example):
        verdict = target(example)
        tally[verdict.split(":")[0]] += 1
        if verdict.startswith("escaped") and len(escapes) < 5:
            escapes.append(f"{example!r}: {verdict}")

    feed()
    tried = sum(tally.values())
    return {"tried": tried, "clean": tried - tally["escaped"], "accepted": tally["accepted"],
            "refused": tally["refused"], "escaped": tally["escaped"], "examples_of_escapes": escapes}


def fuzz(examples: int, work: Path, run: Path) -> dict:
    encoders = fz.plugin_encoders()
    original = fz.small_checkpoint(work / "original.safetensors")
    meta_run = work / "meta_run"
    shutil.copytree(run, meta_run)
    tensors, meta = checkpoint.load(run / "checkpoints" / "last.safetensors")
    pairs = st.tuples(st.sampled_from(sorted(encoders)), fz.condition_texts)
    return {
        "config overrides (ldm train)": count(fz.overrides, fz.train_config, examples),
        "ldm sample words": count(fz.sample_words, fz.sample_request, examples),
        f"condition values ({', '.join(sorted(encoders))})":
            count(pairs, lambda p: fz.condition_value(encoders, *p), examples),
        "checkpoint bytes": count(fz.mutations, lambda m: fz.checkpoint_bytes(work, original, m), examples),
        "checkpoint metadata (sample and resume)":
            count(fz.metadata, lambda c: fz.checkpoint_metadata(meta_run, tensors, meta, c),
                  max(10, examples // 20)),
    }


def kills(n: int, steps: int, work: Path, run: Path) -> dict:
    every_step = ["experiment=smoke", "trainer.precision=fp32", f"trainer.max_steps={steps}",
                  "trainer.checkpoint_every=1", "trainer.keep_checkpoints=0", "trainer.log_every=1",
                  f"autoencoder.checkpoint={run / 'checkpoints' / 'autoencoder.safetensors'}"]
    reference, killed = work / "reference", work / "killed"
    train(load([*every_step, f"run_dir={reference}"]))
    t0 = time.perf_counter()
    report = train_with_kills(killed, [*every_step, f"run_dir={killed}"], n, seed=0)
    differ = same_weights(killed / "checkpoints" / "last.safetensors",
                          reference / "checkpoints" / "last.safetensors")
    return {"kills": report.kills, "during_checkpoint_write": report.during_write,
            "process_ended_first": report.finished_early, "resumes": report.kills,
            "final_weights_identical": not differ, "differing_tensors": differ[:5],
            "temp_files_left": len(temp_files(killed)), "seconds": round(time.perf_counter() - t0, 1),
            "events": report.events}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="Hypothesis examples per input")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs during one training run")
    ap.add_argument("--steps", type=int, default=50, help="training steps of the killed run")
    ap.add_argument("--variant", default="full", help="results file stem (default full)")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the JSON here instead of the results folder")
    args = ap.parse_args()
    out = args.out or result_paths("reliability", args.variant)[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = work / "smoke"
        train(load(["experiment=smoke", f"run_dir={run}", "trainer.precision=fp32"]))
        result = {"machine": machine(), "examples": args.examples,
                  "fuzz": fuzz(args.examples, work, run), "kill_resume": kills(args.kills, args.steps, work, run)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{'input':58s} {'tried':>6s} {'clean':>6s} {'accepted':>8s} {'refused':>7s}")
    for name, r in result["fuzz"].items():
        print(f"{name:58s} {r['tried']:6d} {r['clean']:6d} {r['accepted']:8d} {r['refused']:7d}")
        for e in r["examples_of_escapes"]:
            print(f"    escaped: {e}")
    k = result["kill_resume"]
    print(f"SIGKILL: {k['kills']} kills ({k['during_checkpoint_write']} during a checkpoint write), "
          f"{k['resumes']} resumes, final weights identical to the uninterrupted run: "
          f"{k['final_weights_identical']}, temp files left: {k['temp_files_left']}")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
