"""Precision and threads chosen from the hardware: both choices of ``auto`` on any machine.

``LDM_NATIVE_BF16`` makes ``auto`` see a CPU with or without native bf16, so the float32 path
of an AVX2-only CPU and the bf16 path of an AMX CPU both run here, whichever this machine is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from ldmcore.errors import ConfigError
from ldmcore.hardware import choose, choose_precision, choose_threads, cpu_info, threads
from ldmcore.hardware.measure import matmul_rate
from ldmcore.hardware.precision import _warned


@pytest.fixture
def bf16(monkeypatch):
    """Set whether the CPU has native bf16 (or None: what it reports) for ``cpu_info``."""
    def set_native(native: bool | None) -> None:
        if native is None:
            monkeypatch.delenv("LDM_NATIVE_BF16", raising=False)
        else:
            monkeypatch.setenv("LDM_NATIVE_BF16", "1" if native else "0")
        cpu_info.cache_clear()
    yield set_native
    monkeypatch.delenv("LDM_NATIVE_BF16", raising=False)
    cpu_info.cache_clear()


def test_cpu_report_is_consistent_with_torch(bf16, monkeypatch):
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    bf16(None)
    info = cpu_info()
    assert info.capability == torch.backends.cpu.get_cpu_capability()
    assert info.native_bf16 == (info.amx or info.avx512_bf16)
    assert info.cores == len(os.sched_getaffinity(0)) and info.model in info.summary


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(bf16, native, expected):
    bf16(native)
    choice = choose_precision("auto", "cpu")
    assert (choice.name, choice.requested, choice.grad_scaler) == (expected, "auto", False)
    assert "LDM_NATIVE_BF16" in choice.reason  # the reason says what decided


def test_onednn_isa_cap_below_bf16_means_emulated(bf16, monkeypatch):
    bf16(None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cpu_info.cache_clear()
    assert choose_precision("auto", "cpu").name == "fp32"
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in cpu_info().bf16_note


@pytest.mark.parametrize("native, batch", [(True, 128), (False, 96)])
def test_the_demo_takes_a_lighter_batch_where_the_precision_resolves_to_float32(bf16, native, batch):
    from ldmcore.config import load

    bf16(native)
    assert load(["experiment=demo"]).trainer.batch_size == batch
    assert load(["experiment=demo", "trainer.precision=fp32"]).trainer.batch_size == 96


def test_explicit_choices_are_obeyed_and_autocast_computes_in_them(bf16):
    bf16(True)
    layer = torch.nn.Linear(8, 8)
    x = torch.randn(2, 8)
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        choice = choose_precision(name, "cpu")
        assert choice.name == name
        with choice.autocast():
            assert layer(x).dtype == dtype


def test_bf16_on_a_cpu_that_emulates_it_runs_but_warns_once_with_a_measurement(bf16, capsys):
    bf16(False)
    _warned.clear()
    assert choose_precision("bf16", "cpu").name == "bf16"
    choose_precision("bf16", "cpu")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "matmul measured" in err and "than float32" in err


@pytest.mark.parametrize("bad", ["fp16", "fp8"])
def test_unusable_precision_on_cpu_is_a_config_error(bad):
    with pytest.raises(ConfigError) as exc:
        choose_precision(bad, "cpu")
    assert "auto" in str(exc.value) and "fp32" in str(exc.value)


def test_explicit_threads_are_obeyed_and_bad_ones_explained():
    assert choose_threads(3).threads == 3 and choose_threads("2").threads == 2
    for bad in (0, "many", -1):
        with pytest.raises(ConfigError, match="threads=auto"):
            choose_threads(bad)


def test_auto_threads_respect_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    choice = choose_threads("auto", look_s=0.05)
    assert choice.threads == 1 and "OMP_NUM_THREADS=1" in choice.reason


def test_other_processes_busy_time_is_total_busy_minus_our_own():
    # 2 cores, 1 s = 100 ticks per core: the machine was busy 150 ticks, 50 of them ours
    before = threads._CpuTimes(busy=1000, total=4000, own=300, cores=2)
    after = threads._CpuTimes(busy=1150, total=4200, own=350, cores=2)
    assert threads._others_busy(before, after) == pytest.approx(1.0)
    assert threads._fit(2, 1.0) == 1 and threads._fit(2, 0.2) == 2 and threads._fit(2, 2.0) == 1
    assert threads._fit(4, 1.5) == 2 and threads._fit(4, None) == 4


def _spinner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not os.path.exists("/proc/stat"),
                    reason="needs two cores and /proc to share one")
def test_a_process_spinning_on_a_core_takes_a_thread_away_and_gives_it_back(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    cap = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    spinner = _spinner()
    try:
        busy = choose_threads("auto", look_s=0.5)
        assert busy.threads <= cap - 1  # one core is the spinner's
        governor = threads.ThreadGovernor(busy, every_s=0.0)
        assert torch.get_num_threads() == busy.threads
    finally:
        spinner.kill()
        spinner.wait()
    import time
    time.sleep(0.5)
    governor.tick()  # the spinner is gone: the count only grows back (other load may remain)
    assert governor.threads >= busy.threads and torch.get_num_threads() == governor.threads
    torch.set_num_threads(before)


def test_fixed_threads_are_never_changed_by_the_governor():
    before = torch.get_num_threads()
    governor = threads.ThreadGovernor(choose_threads(1), every_s=0.0)
    assert governor.tick() is None and torch.get_num_threads() == 1
    torch.set_num_threads(before)


def test_matmul_rate_counts_two_flops_per_multiply_add():
    rate = matmul_rate(torch.float32, seconds=0.05, size=64)
    assert rate.repetitions >= 3 and rate.gflops > 0 and rate.size == 64


def test_choose_records_both_choices_with_the_machine(bf16):
    bf16(False)
    choice = choose("auto", 1, "cpu", announce=False)
    record = choice.record()
    assert record["precision"] == "fp32" and record["threads"] == 1
    assert cpu_info().model in record["machine"] and torch.__version__ in record["machine"]
    json.dumps(record)  # goes into checkpoint metadata and metrics.jsonl as it is


def test_doctor_reports_what_auto_picks_and_lists_plugins(bf16, capsys):
    from ldmcore.cli import main
    from ldmcore.doctor import report

    bf16(False)
    assert main(["doctor", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["torch"] == torch.__version__ and r["cpu"]["native_bf16"] is False
    cpu_dev = r["devices"][0]
    assert cpu_dev["device"] == "cpu" and cpu_dev["precision_auto"] == "fp32"
    assert cpu_dev["matmul"]["float32"]["gflops"] > 0 and cpu_dev["matmul"]["bfloat16"]["gflops"] > 0
    assert "class" in {p["name"] for p in r["plugins"]["installed"]}
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    assert "precision=auto: fp32" in text and "threads=auto" in text and "plugins: " in text
    assert set(report(seconds=0.05)) == set(r)


def test_doctor_refuses_unknown_arguments(capsys):
    from ldmcore.cli import main

    assert main(["doctor", "--yaml"]) == 2
    assert "--json" in capsys.readouterr().err
