"""Capability probes and their fallbacks: every branch runs on every machine, by forcing the probe's answer
(src/churnwatch/runtime/hardware.py)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from churnwatch.config.compose import compose
from churnwatch.errors import ConfigError
from churnwatch.runs.train import train
from churnwatch.runtime import hardware
from churnwatch.runtime.hardware import forced
from tests.helpers import TINY


def test_forced_answers_come_from_the_environment_and_forced_wins(monkeypatch):
    monkeypatch.setenv(hardware.FORCE_ENV, "bf16=0, compile=yes")
    assert hardware.forced_answers() == {"bf16": False, "compile": True}
    with forced(bf16=True):
        assert hardware.forced_answers() == {"bf16": True, "compile": True}
        assert hardware.bf16_support(torch.device("cpu")) == hardware.Answer(
            True, "bf16 on: forced by CHURNWATCH_FORCE or forced()", forced=True
        )
    assert not hardware.bf16_support(torch.device("cpu")).ok
    monkeypatch.setenv(hardware.FORCE_ENV, "bf16=maybe")
    with pytest.raises(ValueError, match="CHURNWATCH_FORCE='bf16=maybe': expected comma-separated"):
        hardware.forced_answers()
    with pytest.raises(ValueError, match="unknown features"), forced(avx=True):
        pass


def test_the_unforced_bf16_answer_is_bf16_units_and_onednn_kernels_together():
    cpu = torch.device("cpu")
    units, kernels = hardware.cpu_bf16_units(), hardware.onednn_bf16()
    answer = hardware.bf16_support(cpu)
    assert answer.ok == (units.ok and kernels.ok) and not answer.forced
    assert answer.reason == (units.reason if not units.ok else kernels.reason)
    assert hardware.choose_precision("fp32", cpu) == "fp32"
    assert hardware.choose_precision("auto", cpu) == ("bf16" if answer.ok else "fp32")
    with pytest.raises(ValueError, match="precision must be one of"):
        hardware.choose_precision("fp16", cpu)


def test_the_onednn_probe_leaves_the_runs_random_state_alone():
    """It runs inside a seeded training run (bf16-mixed on CPU): drawing its layers' weights from the global
    generator would change what the seed means."""
    torch.manual_seed(123)
    before = torch.get_rng_state()
    hardware.onednn_bf16.__wrapped__()  # the probe itself, not its cached answer
    assert torch.equal(torch.get_rng_state(), before)


PROBE_UNDER_AVX2 = """
import json, torch
from churnwatch.runtime import hardware
cpu = torch.device("cpu")
precision = hardware.choose_precision("bf16", cpu)
lstm = torch.nn.LSTM(8, 8, batch_first=True)
with torch.inference_mode(), hardware.autocast(cpu, precision == "bf16"):
    out, _ = lstm(torch.randn(4, 5, 8))
found = {"precision": precision, "onednn": hardware.onednn_bf16().ok, "finite": bool(out.isfinite().all())}
print(json.dumps(found))
"""


@pytest.mark.parametrize("force", ["", "bf16=1"], ids=["probed", "forced-bf16"])
def test_an_lstm_asked_for_bf16_never_crashes_when_onednn_is_capped_at_avx2(force):
    """ONEDNN_MAX_CPU_ISA=AVX2 takes oneDNN's bf16 LSTM kernel away even on a CPU with AVX-512 (on an
    AVX2-only CPU it never had one): the probe sees it, and bf16 (probed or forced) still runs."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", hardware.FORCE_ENV: force}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_UNDER_AVX2], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["finite"]
    if force:
        assert found["precision"] == "bf16"
    else:
        assert found["precision"] == ("bf16" if found["onednn"] and hardware.cpu_bf16_units().ok else "fp32")


def test_a_device_the_machine_does_not_have_is_a_one_line_config_error():
    assert hardware.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"device='gpu': expected auto, cpu, cuda or cuda:<index>"):
        hardware.resolve_device("gpu")
    if not torch.cuda.is_available():
        assert hardware.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="device=cuda: CUDA is not available on this machine"):
            hardware.resolve_device("cuda")


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
    ids=["v2-limit", "v2-unlimited", "v1-limit", "v1-unlimited", "no-cgroup"],
)
def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert hardware.cpu_quota(tmp_path) == expected


def test_torch_gets_no_more_threads_than_the_process_may_use():
    code = (
        "import torch; from churnwatch.runtime import hardware; "
        "torch.set_num_threads(hardware.usable_cpus() + 4); "
        "print(hardware.fit_threads(), hardware.usable_cpus())"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    threads, cpus = map(int, out.stdout.split())
    assert threads == cpus <= (os.cpu_count() or 1)
    env["OMP_NUM_THREADS"] = "3"  # the user's setting wins
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout.split()[0]) == hardware.usable_cpus() + 4


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hardware-data")


def _train(data_dir: Path, run_dir: Path, *overrides: str) -> dict:
    cfg = compose(
        "train",
        [
            f"data.data_dir={data_dir}",
            f"paths.output_dir={run_dir}",
            *TINY,
            "insights.enabled=false",
            "report=false",
            *overrides,
        ],
    )
    return train(cfg)


@pytest.mark.parametrize("supported", [True, False], ids=["probe-says-bf16", "probe-says-no-bf16"])
def test_bf16_mixed_training_on_cpu_runs_or_falls_back_to_32_true(data_dir, tmp_path, supported, caplog):
    with forced(bf16=supported), caplog.at_level(logging.INFO):
        metrics = _train(data_dir, tmp_path, "trainer.precision=bf16-mixed", "export=false")
    lines = [r.getMessage() for r in caplog.records if r.name == "churnwatch.runtime.hardware"]
    amp = any("bfloat16 Automatic Mixed Precision" in r.getMessage() for r in caplog.records)
    assert 0.5 < metrics["test"]["test/auroc"] <= 1
    if supported:
        assert amp and lines == [
            "trainer.precision=bf16-mixed: bf16 on: forced by CHURNWATCH_FORCE or forced()"
        ]
    else:
        assert not amp and len(lines) == 1 and lines[0].endswith("; training in 32-true")


def test_compile_where_the_probe_says_no_trains_eagerly_and_says_why(data_dir, tmp_path, caplog):
    with forced(compile=False), caplog.at_level(logging.WARNING, logger="churnwatch.runtime.hardware"):
        _train(data_dir, tmp_path, "model.compile=true")
    [line] = [r.getMessage() for r in caplog.records]
    assert line == "model.compile=true: compile off: forced by CHURNWATCH_FORCE or forced(); training eagerly"
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any("_orig_mod" in k for k in state["state_dict"])
    assert (tmp_path / "model.pt").exists()


@pytest.mark.slow
def test_compile_where_the_probe_says_yes_trains_a_compiled_network_that_exports(data_dir, tmp_path):
    answer = hardware.compile_support(torch.device("cpu"))
    if not answer.ok:
        pytest.skip(f"the probe says no here: {answer.reason}")
    metrics = _train(data_dir, tmp_path, "model.compile=true")
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any("_orig_mod" in k for k in state["state_dict"])
    assert 0.5 < metrics["test"]["test/auroc"] <= 1 and (tmp_path / "model.pt").exists()
