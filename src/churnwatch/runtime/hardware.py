"""What this machine can do, probed once per process, and what a run does where it can't.

Every feature that depends on the CPU or GPU is decided here, before a job starts, by a capability probe,
never by catching errors mid-job:

- **bf16** (scoring `precision=bf16`, training `trainer.precision=bf16-mixed`): used where the device has
  bf16 units (a GPU of compute capability 8.0 or later; a CPU with AVX-512 BF16 or AMX, or an Arm CPU with
  BF16) *and* oneDNN runs the networks' kernels in bf16 there, which a tiny LSTM, GRU and attention layer
  are run once to find out (oneDNN's bf16 LSTM needs AVX-512: on an AVX2-only CPU, or under
  ONEDNN_MAX_CPU_ISA=AVX2, it cannot even create the kernel). Elsewhere the run says why in one line and
  goes on in fp32, which is also the faster choice there (emulated bf16 is ~10x slower on AVX2).
- **torch.compile** (`model.compile=true`): a tiny function is compiled and run on the device once (it
  needs a C++ compiler on CPU, Triton on GPU, a supported Python); without it training runs eagerly.
- **threads**: torch sizes its thread pool from the cores it sees, not from a container's CPU quota; a run
  limited to fewer CPUs than torch would use is given that many threads (unless OMP_NUM_THREADS is set).

A probe's answer can be forced, for tests of both branches on any machine or by a user who knows better:
`CHURNWATCH_FORCE="bf16=0,compile=1"` in the environment, or `with forced(bf16=False): ...`. A forced bf16
on a CPU whose oneDNN cannot run an RNN in bf16 keeps the RNN off oneDNN (in fp32, slowly), so it runs
rather than crashes.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from churnwatch.errors import ConfigError

log = logging.getLogger(__name__)
FORCE_ENV = "CHURNWATCH_FORCE"
FEATURES = ("bf16", "compile")
_forced: dict[str, bool] = {}


@dataclass(frozen=True)
class Answer:
    """A probe's verdict: `ok`, and `reason`, a phrase that says why not (or what was found)."""

    ok: bool
    reason: str = ""
    forced: bool = False


def forced_answers() -> dict[str, bool]:
    """The answers forced by `forced(...)` over those of CHURNWATCH_FORCE (e.g. "bf16=0,compile=1")."""
    answers: dict[str, bool] = {}
    for item in filter(None, (s.strip() for s in os.environ.get(FORCE_ENV, "").split(","))):
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if name not in FEATURES or value not in ("0", "1", "true", "false", "yes", "no"):
            raise ConfigError(
                f"{FORCE_ENV}={os.environ[FORCE_ENV]!r}: expected comma-separated <feature>=0|1 with "
                f"features {', '.join(FEATURES)}, got {item!r}"
            )
        answers[name] = value in ("1", "true", "yes")
    return {**answers, **_forced}


@contextmanager
def forced(**answers: bool) -> Iterator[None]:
    """Force probe answers inside the block, e.g. `with forced(bf16=False):` (tests of both branches)."""
    unknown = set(answers) - set(FEATURES)
    if unknown:
        raise ValueError(f"unknown features {sorted(unknown)}; known: {FEATURES}")
    before = dict(_forced)
    _forced.update(answers)
    try:
        yield
    finally:
        _forced.clear()
        _forced.update(before)


def _decide(feature: str, probe: Callable[[], Answer]) -> Answer:
    """The forced answer for `feature` if there is one (the probe then never runs), else the probe's."""
    force = forced_answers().get(feature)
    if force is None:
        return probe()
    return Answer(force, f"{feature} {'on' if force else 'off'}: forced by {FORCE_ENV} or forced()", True)


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` (a GPU when there is one, else the CPU), `cpu`, `cuda` or `cuda:<i>`; a device this machine
    does not have is a one-line ConfigError, not a failure in the middle of a job."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device={device!r}: expected auto, cpu, cuda or cuda:<index>") from None
    if found.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={device!r}: expected auto, cpu, cuda or cuda:<index>")
    if found.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device}: CUDA is not available on this machine (use cpu or auto)")
        if found.index is not None and found.index >= torch.cuda.device_count():
            raise ConfigError(f"device={device}: this machine has {torch.cuda.device_count()} GPU(s)")
    return found


# ---------------------------------------------------------------------------------------------- bf16


def bf16_support(device: torch.device) -> Answer:
    """Whether bf16 autocast is worth using and works on `device` (see the module docstring)."""
    if device.type == "cuda":
        return _decide("bf16", lambda: _cuda_bf16(device.index))
    if device.type != "cpu":
        return _decide("bf16", lambda: Answer(False, f"bf16 is not probed on {device.type}"))
    return _decide("bf16", lambda: onednn_bf16() if cpu_bf16_units().ok else cpu_bf16_units())


@functools.cache
def _cuda_bf16(index: int | None) -> Answer:
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Answer(True, "the GPU has bf16 units")
    name = torch.cuda.get_device_name(index)
    major, minor = torch.cuda.get_device_capability(index)
    return Answer(False, f"this GPU ({name}, compute capability {major}.{minor}) has no bf16 units")


@functools.cache
def cpu_bf16_units() -> Answer:
    """Native bf16 arithmetic: AVX-512 BF16 or AMX on x86, the BF16 extension on Arm."""
    flags = _cpu_flags()
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64", "i386", "i686"):
        cpu = getattr(torch, "cpu", None)
        found = any(
            bool(getattr(cpu, probe, lambda: False)())
            for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        ) or bool(flags & {"avx512_bf16", "amx_bf16"})
        return Answer(found, "" if found else "this CPU has no bf16 units (AVX-512 BF16 or AMX)")
    if machine in ("aarch64", "arm64"):
        found = "bf16" in flags
        return Answer(found, "" if found else "this CPU has no bf16 units (Arm BF16)")
    return Answer(False, f"bf16 is not probed on {machine} CPUs")


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def onednn_bf16() -> Answer:
    """Run a tiny LSTM, GRU and attention layer under CPU bf16 autocast: oneDNN either builds its bf16
    kernels on this CPU (and with this ONEDNN_MAX_CPU_ISA) or refuses, which is the answer."""
    with torch.random.fork_rng(devices=[]):  # the probe's layers draw weights: leave the run's RNG alone
        torch.manual_seed(0)
        x = torch.randn(2, 3, 8)
        layers = {
            "LSTM": torch.nn.LSTM(8, 8, batch_first=True),
            "GRU": torch.nn.GRU(8, 8, batch_first=True),
            "attention": torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True),
        }
    for name, layer in layers.items():
        try:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):
                out = layer.eval()(x)
            out = out[0] if isinstance(out, tuple) else out
            if not bool(torch.isfinite(out.float()).all()):
                return Answer(False, f"this CPU's oneDNN build gives non-finite bf16 results for {name}")
        except RuntimeError as exc:
            return Answer(False, f"bf16 not supported by this CPU's oneDNN build for {name} ({_first(exc)})")
    return Answer(True, "oneDNN runs LSTM, GRU and attention in bf16")


def _first(exc: BaseException) -> str:
    """An error's first sentence (oneDNN and inductor messages go on for lines)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(". ")[0][:200]


PRECISIONS = ("fp32", "bf16", "auto")
"""Scoring's forward precision: fp32 reproduces training's probabilities; bf16 autocast is faster where
the device has bf16 units and moves probabilities by ~1e-2 at most (docs/BENCHMARKS.md); auto is bf16
where `bf16_support` says so, else fp32, without a warning."""


def use_bf16(setting: str, device: torch.device, fallback: str, quiet: bool = False) -> bool:
    """Whether the run asking for bf16 with `setting` (e.g. "precision=bf16") gets it on `device`; one
    log line when the answer was forced, and one (INFO with `quiet`) naming `fallback` when it is no."""
    answer = bf16_support(device)
    if answer.ok and answer.forced:
        log.warning("%s: %s", setting, answer.reason)
    elif not answer.ok:
        (log.info if quiet else log.warning)("%s: %s; %s", setting, answer.reason, fallback)
    return answer.ok


def choose_precision(requested: str, device: torch.device) -> str:
    """Scoring's `requested` precision (fp32 | bf16 | auto) as this device can run it: bf16 or fp32, with
    one log line when bf16 was asked for and the probe says no."""
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    if requested == "fp32":
        return "fp32"
    usable = use_bf16(f"precision={requested}", device, "scoring in fp32", quiet=requested == "auto")
    return "bf16" if usable else "fp32"


def accelerator_device(accelerator: str) -> torch.device:
    """The device type a Lightning `trainer.accelerator` trains on (auto: a GPU when there is one)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def training_precision(precision: str | int, device: torch.device) -> str | int:
    """Lightning's `trainer.precision` as `device` can run it: a bf16 setting (bf16-mixed, bf16-true,
    bf16) becomes 32-true, with one log line, where the probe says no."""
    if "bf16" not in str(precision):
        return precision
    if device.type == "cuda" and not torch.cuda.is_available():
        return precision  # Lightning itself refuses a GPU run without a GPU, in one line
    return (
        precision if use_bf16(f"trainer.precision={precision}", device, "training in 32-true") else "32-true"
    )


@contextmanager
def bf16_kernels(device: torch.device, bf16: bool) -> Iterator[None]:
    """Inside a bf16 pass on a CPU whose oneDNN cannot run RNNs in bf16 (reachable only by forcing bf16
    there), keep oneDNN out, so the LSTM runs in fp32 instead of failing to build its kernel."""
    if not bf16 or device.type != "cpu" or onednn_bf16().ok:
        yield
        return
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


@contextmanager
def autocast(device: torch.device, bf16: bool) -> Iterator[None]:
    """The forward pass in bf16 autocast (or not), with `bf16_kernels`' guard."""
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16), bf16_kernels(device, bf16):
        yield


# ------------------------------------------------------------------------------------- torch.compile


def compile_support(device: torch.device) -> Answer:
    """Whether `torch.compile` works here: a tiny function is compiled and run on `device` once."""
    return _decide("compile", lambda: _compile_probe(device.type))


@functools.cache
def _compile_probe(device_type: str) -> Answer:
    if not torch._dynamo.is_dynamo_supported():
        return Answer(False, f"torch.compile does not support Python {platform.python_version()}")
    if device_type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            return Answer(False, "torch.compile on a GPU needs Triton, which is not installed")
    try:
        fn = torch.compile(lambda x: torch.relu(x) * 2 + 1, dynamic=False)
        out = fn(torch.arange(-2.0, 2.0, device=device_type))
        if out.tolist() != [1.0, 1.0, 1.0, 3.0]:
            return Answer(False, "torch.compile gave a wrong result on a probe")
    except Exception as exc:  # the probe itself: any failure of the toolchain means "no"
        return Answer(False, f"torch.compile failed on a probe ({_first(exc)})")
    return Answer(True, "torch.compile works")


def maybe_compile(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`torch.compile(net)` where the probe says it works, else `net`, with one log line."""
    answer = compile_support(device)
    if not answer.ok:
        log.warning("model.compile=true: %s; training eagerly", answer.reason)
        return net
    return torch.compile(net)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- threads


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPUs a cgroup (v2 cpu.max, or v1's CFS quota) lets this process use; None without a limit."""
    try:
        if (root / "cpu.max").exists():
            quota, *period = (root / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period[0] if period else 100_000)
        if (root / "cpu" / "cpu.cfs_quota_us").exists():
            quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
            period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None
    return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota()
    return max(1, min(cpus, math.ceil(quota)) if quota else cpus)


@functools.cache
def fit_threads() -> int:
    """Give torch no more intra-op threads than this process may use (once per process; a user's
    OMP_NUM_THREADS wins). Returns the threads torch uses."""
    threads = torch.get_num_threads()
    cpus = usable_cpus()
    if "OMP_NUM_THREADS" in os.environ or threads <= cpus:
        return threads
    log.info("torch would use %d threads but this process may use %d CPUs: using %d", threads, cpus, cpus)
    torch.set_num_threads(cpus)
    return cpus


@contextmanager
def threads_as_workers(tasks: int, device: torch.device | str) -> Iterator[int]:
    """How many Python threads should share `tasks` independent pieces of torch work: on CPU, with more
    than one task and more than one intra-op thread, one worker per intra-op thread, each running its
    ops on one thread (torch is set to one meanwhile); else 1, nothing changed. Integrated gradients on
    2 cores explained 1.46x more customers/s as two one-thread workers than as one two-thread worker: the
    LSTM's per-step kernels and the per-pass Python work scale poorly within one pass
    (docs/BENCHMARKS.md)."""
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu" or tasks < 2 or threads < 2:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield min(threads, tasks)
    finally:
        torch.set_num_threads(threads)


@contextmanager
def leave_a_core(leave: bool = True) -> Iterator[None]:
    """Torch runs one intra-op thread fewer (at least one) while a background thread works beside it
    (`prefetch.ahead`). On 2 cores, a forward pass on both next to a reading thread ran 2.4× slower
    than alone and the whole run gained nothing; on one it ran 1.8× slower, and a 1M-customer run took 13%
    less time (docs/BENCHMARKS.md, "On the AMX Xeon again"). `leave=False`: unchanged."""
    threads = torch.get_num_threads()
    if leave:
        torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
