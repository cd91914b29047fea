"""Fidelity against network evaluations (NFE) for every sampler, on a trained digits run.

For each registered sampler, with the noise levels and knobs of its shipped config
(``conf/sampler/<name>.yaml``), and each evaluation budget (default 5, 10, 20, 50, 100), the
script generates the same class-conditional requests from the same per-sample noise and
measures three things with the independent reader of ``ldm eval`` (an RBF-SVM trained on real
digits, ``ldmcore.eval.digits``):

* fidelity - the fraction of samples the reader reads as the class asked for (``ldm eval``);
* confidence - the mean probability the reader (Platt-calibrated) gives the class asked for:
  continuous, so it still separates samplers where fidelity saturates at 100%;
* FD - the Frechet distance between Gaussian fits of the reader's 10 decision values on the
  samples and on held-out real digits (FID's construction, with the reader as feature
  extractor); lower is closer to the real distribution. The floor - FD of as many real
  held-out digits as samples - is printed with the table.

* RMSE - for the deterministic samplers, the root-mean-square pixel distance (images in
  [-1, 1]) from each sample to the converged solution of the same probability-flow ODE from the
  same noise (DPM-Solver++(3M), eta = 0, at ``--reference-steps`` Karras steps): the sampler's
  own error, with no classifier in between. The table shows the *median* over samples: the
  odd sample whose trajectory passes near the boundary between two digit shapes lands on the
  other side (RMSE ~0.5 where the rest are ~0.001), and would dominate a mean; the count of
  such flips (RMSE > 0.2) is kept in the JSON. (Stochastic samplers solve an SDE; they have no
  per-sample reference and are judged by the three metrics above.)

plus the wall time per sample (sampling and decoding, batch = all samples, this machine).
Heun spends two evaluations per step, so it runs the most steps that fit the budget. DDIM and
DDPM run on *trailing* timesteps (Lin et al. 2023), so every sampler starts at the schedule's
largest sigma and the ODE they integrate is the same one.
Results accumulate in ``benchmarks/results/samplers/<variant>.json`` (variant ``full`` unless
named; a rerun with the same settings skips what is there, so a long run can be resumed) and the
Markdown table is written beside it.

    python -m benchmarks.samplers --run runs/demo [--per-class 10] [--guidance 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.support.results import load_average, result_paths  # noqa: E402
from benchmarks.support.runs import load_trained_run  # noqa: E402
from benchmarks.support.sampler_plans import BUDGETS, sampler_plans  # noqa: E402
from ldmcore import checkpoint  # noqa: E402


class Reader:
    """The ``ldm eval`` reader, plus a calibrated twin and its decision values as features."""

    def __init__(self, seed: int = 0) -> None:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
        from sklearn.svm import SVC

        from ldmcore.data.transforms import build_pipeline
        from ldmcore.eval.digits import _to_reader_space

        digits = load_digits()
        x_train, x_test, y_train, y_test = train_test_split(
            digits.images, digits.target, test_size=0.25, random_state=seed, stratify=digits.target)
        flat = x_train.reshape(len(x_train), -1)
        self.svc = SVC(gamma=0.001, C=10.0).fit(flat, y_train)
        self.calibrated = CalibratedClassifierCV(SVC(gamma=0.001, C=10.0), ensemble=False).fit(flat, y_train)
        pipe = build_pipeline(32)
        up = np.stack([np.clip(pipe(image=(im / 16.0).astype(np.float32))["image"], 0, 1) * 255
                       for im in x_test])
        self.to_features = _to_reader_space
        self.real = self.svc.decision_function(_to_reader_space(up))
        self.real_labels = y_test

    def score(self, images: torch.Tensor, wanted: np.ndarray) -> dict[str, float]:
        from ldmcore.images import to_uint8

        grey = to_uint8(images)[..., 0].astype(np.float32)  # the PNG ``ldm sample`` would write
        feats = self.to_features(grey)
        read = self.svc.predict(feats)
        proba = self.calibrated.predict_proba(feats)[np.arange(len(wanted)), wanted]
        return {"fidelity": float((read == wanted).mean()), "confidence": float(proba.mean()),
                "fd": frechet(self.svc.decision_function(feats), self.real)}

    def floor(self, n: int, seed: int = 0) -> float:
        """FD of ``n`` real held-out digits (class-balanced draw) against all of them."""
        rng = np.random.default_rng(seed)
        per = n // 10
        idx = np.concatenate([rng.choice(np.flatnonzero(self.real_labels == c), per, replace=False)
                              for c in range(10)])
        return frechet(self.real[idx], self.real)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(Ca + Cb - 2 (Ca Cb)^1/2) between Gaussian fits."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # (Ca Cb)^1/2 has the eigenvalues of (Ca^1/2 Cb Ca^1/2)^1/2, which is symmetric
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root_a @ cb @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb)
                 - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a trained digits run")
    parser.add_argument("--per-class", type=int, default=10, help="samples per digit class")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--nfe", type=int, nargs="+", default=list(BUDGETS))
    parser.add_argument("--samplers", nargs="+", default=None, help="default: every shipped one")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="fp32")  # fp32: exact comparisons
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--spacing", default="trailing", help="timesteps of ddim/ddpm")
    parser.add_argument("--reference-steps", type=int, default=200)
    parser.add_argument("--variant", default="full", help="results file stem (default full)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write the JSON here (and the table beside it) instead")
    args = parser.parse_args()
    args.out = args.out or result_paths("samplers", args.variant)[0]
    if args.threads:
        torch.set_num_threads(args.threads)

    from ldmcore.diffusion.guidance import Guidance
    from ldmcore.diffusion.samplers import SAMPLERS
    from ldmcore.diffusion.plan import SamplingPlan
    from ldmcore.diffusion.sigmas import SigmaKind, SigmaPlan
    from ldmcore.hardware import autocast, machine_line

    _, model, _ = load_trained_run(args.run, "make demo")
    reader = Reader()
    n = 10 * args.per_class
    classes = torch.arange(10).repeat_interleave(args.per_class)
    noise = torch.stack([torch.randn(model.latent_shape(), generator=torch.Generator().manual_seed(i))
                         for i in range(n)])
    settings = {"run": str(args.run), "n": n, "guidance": args.guidance, "precision": args.precision,
                "spacing": args.spacing, "reference_steps": args.reference_steps}
    store = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if store.get("settings") != settings:
        store = {"settings": settings, "rows": {}}
    store["machine"] = (f"{machine_line()}; {torch.get_num_threads()} threads; {args.precision}; "
                        f"{load_average()}")
    store["floor_fd"] = reader.floor(n)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def generate(plan: SamplingPlan) -> torch.Tensor:
        with autocast(args.precision, torch.device("cpu")):
            return model.sample({"class": classes}, n, plan, noise=noise,
                                generator=torch.Generator().manual_seed(0))

    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path("runs/bench_cache") / f"reference_{digest}.safetensors"
    if cache.is_file():
        reference = checkpoint.load(cache)[0]["reference"]
    else:
        reference = generate(SamplingPlan(SAMPLERS["dpmpp_3m_sde_third_order"], args.reference_steps,
                                          SigmaPlan(SigmaKind.KARRAS), {"eta": 0.0},
                                          Guidance(args.guidance)))
        cache.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.save(cache, {"reference": reference})
    store["reference_score"] = reader.score(reference, classes.numpy())

    for name, setup in sampler_plans(args.samplers, args.spacing, args.guidance).items():
        spec = setup["plan"].sampler
        for budget in args.nfe:
            key = f"{name}@{budget}"
            if key in store["rows"]:
                continue
            steps = spec.steps_for(budget)
            t0 = time.perf_counter()
            images = generate(setup["plan"].but(steps=steps))
            wall = time.perf_counter() - t0
            per_sample = ((images - reference) ** 2).mean(dim=(1, 2, 3)).sqrt()
            rmse = per_sample.median().item() if setup["deterministic"] else None
            flips = int((per_sample > 0.2).sum()) if setup["deterministic"] else None
            row = {"sampler": name, "sigmas": setup["plan"].sigmas.kind.value, "budget": budget,
                   "steps": steps, "evals": spec.evals(steps), "ms_per_sample": 1e3 * wall / n,
                   "rmse": rmse, "flips": flips, **reader.score(images, classes.numpy())}
            store["rows"][key] = row
            args.out.write_text(json.dumps(store, indent=1))
            print(f"{key:>22}: fidelity {row['fidelity']:.3f} confidence {row['confidence']:.3f} "
                  f"FD {row['fd']:.2f} RMSE {rmse if rmse is None else round(rmse, 4)} "
                  f"({row['ms_per_sample']:.0f} ms/sample)", flush=True)
    table = markdown(store)
    args.out.with_suffix(".md").write_text(table)
    print(table)


def markdown(store: dict) -> str:
    """Two tables: RMSE to the converged ODE solution, and fidelity / confidence / FD / time."""
    rows = list(store["rows"].values())
    budgets = sorted({r["budget"] for r in rows})
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    s = store["settings"]
    ref = store["reference_score"]
    head = "| sampler (sigmas) | " + " | ".join(f"{b} NFE" for b in budgets) + " |"
    rule = "|---|" + "---|" * len(budgets)

    def table(cell) -> list[str]:
        out = [head, rule]
        for name in names:
            sigmas = next(r["sigmas"] for r in rows if r["sampler"] == name)
            cells = [cell(store["rows"].get(f"{name}@{b}"), b) for b in budgets]
            out.append(f"| {name} ({sigmas}) | " + " | ".join(cells) + " |")
        return out

    def evals_note(r: dict, b: int) -> str:
        return "" if r["evals"] == b else f" ({r['evals']})"

    def rmse(r: dict | None, b: int) -> str:
        if r is None:
            return ""
        return "SDE" if r["rmse"] is None else f"{r['rmse']:.4f}{evals_note(r, b)}"

    def quality(r: dict | None, b: int) -> str:
        if r is None:
            return ""
        return (f"{r['fidelity']:.0%} / {r['confidence']:.3f} / {r['fd']:.2f} / "
                f"{r['ms_per_sample']:.0f}{evals_note(r, b)}")

    lines = [f"Digits run `{s['run']}`, {s['n']} samples (every class alike), guidance "
             f"{s['guidance']:g}, {s['precision']}, discrete samplers on {s['spacing']} timesteps; "
             f"machine {store['machine']}. (n) = evaluations actually spent when a budget "
             f"does not divide into whole steps.", "",
             f"Median RMSE to the converged ODE solution (DPM-Solver++(3M) at {s['reference_steps']} "
             f"Karras steps; its own scores: fidelity {ref['fidelity']:.0%}, confidence "
             f"{ref['confidence']:.3f}, FD {ref['fd']:.2f}):", "", *table(rmse), "",
             f"fidelity / confidence / FD (real-digit floor {store['floor_fd']:.2f}) / ms per "
             f"sample:", "", *table(quality)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
