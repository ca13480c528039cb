"""What more than one test file uses: paths, small hand-made inputs, the tiny training run, the fuzz budgets
and the subprocess helpers of the crash tests. Fixtures live in tests/conftest.py; this module has none."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, settings

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from churnwatch.data.snapshots import EventLog, build_snapshot
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateSpec
from churnwatch.features.encode import EncodedSequences
from churnwatch.jobs.score import ScoreJob, score_file
from churnwatch.models.btyd import BGNBDParams

# -- paths ---------------------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"

# -- hand-made event logs ------------------------------------------------------------------------------------
SCHEMA_CFG = {
    "customer_id": "cid",
    "timestamp": "ts",
    "categorical": ["kind", "cat"],
    "numeric": [{"name": "amount", "min": 0, "fill": 0.0}],
}


def make_events(
    n_customers: int = 40, seed: int = 0, start: str = "2024-01-01", days: int = 200
) -> pd.DataFrame:
    """Random raw events in the SCHEMA_CFG mapping: purchases and complaints over `days` days."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        n = int(rng.integers(1, 30))
        offsets = np.sort(rng.uniform(0, days, n))
        for off in offsets:
            kind = "complaint" if rng.random() < 0.1 else "purchase"
            rows.append(
                {
                    "cid": f"u{c:03d}",
                    "ts": pd.Timestamp(start) + pd.Timedelta(days=float(off)),
                    "kind": kind,
                    "cat": rng.choice(["a", "b", "c", "d"]) if kind == "purchase" else None,
                    "amount": float(rng.gamma(2, 20)) if kind == "purchase" else np.nan,
                }
            )
    return pd.DataFrame(rows)


# -- the tiny training run -----------------------------------------------------------------------------------
TINY = [
    "data.generate.n_customers=1500",
    "trainer.max_epochs=1",
    "model.net.d_model=16",
    "model.net.hidden=16",
    "model.net.head_hidden=16",
    "data.batch_size=128",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.num_sanity_val_steps=0",
    "insights.steps=2",
]
"""Overrides that make `train` a one-epoch CPU run of a small network on small synthetic data."""


def train_tiny(root: Path, *overrides: str) -> dict:
    """Train and export the smallest model (300 synthetic customers, one epoch) into `root`/run; its
    metrics (best_checkpoint among them)."""
    from churnwatch.config.compose import compose
    from churnwatch.runs.train import train

    sizes = [o for o in TINY if not o.startswith("data.generate.n_customers")]
    extra = [*sizes, "data.generate.n_customers=300", "report=false", "insights.enabled=false", *overrides]
    cfg = compose("train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={root / 'run'}", *extra])
    (root / "run").mkdir()
    return train(cfg)


# -- the data plan of the leakage tests ----------------------------------------------------------------------
LEAKAGE_TRAIN_CUTOFFS = ["2024-04-01", "2024-05-01"]
LEAKAGE_TEST_CUTOFF = "2024-06-15"


def leakage_cfg(path: Path, **extra: Any) -> dict:
    """A data config over the SCHEMA_CFG events at `path`: two training cutoffs, a test cutoff, 30-day
    horizon, every aggregate kind; `extra` keys are overridden by these."""
    return {
        **extra,
        **SCHEMA_CFG,
        "events_path": str(path),
        "end_date": "2030-01-01",
        "horizon_days": 30,
        "train_cutoffs": LEAKAGE_TRAIN_CUTOFFS,
        "test_cutoff": LEAKAGE_TEST_CUTOFF,
        "val_fraction": 0.25,
        "seed": 3,
        "max_len": 8,
        "vocab": {"min_count": 1},
        "aggregates": {
            "amount": "amount",
            "purchase_when": "kind == 'purchase'",
            "mix_field": "cat",
            "count_values": ["kind:complaint"],
            "numeric_summaries": ["amount"],
        },
    }


def tamper_from(events: pd.DataFrame, at: str, seed: int = 9, add_at_cutoff: bool = True) -> pd.DataFrame:
    """Change every event at/after `at` and add more there (new customers too).

    Without `add_at_cutoff`, who is active in which label window stays the same, so training labels (and
    the label-stratified validation split) stay the same too.
    """
    rng = np.random.default_rng(seed)
    out = events.copy()
    late = out["ts"] >= pd.Timestamp(at)
    out.loc[late, "amount"] = out.loc[late, "amount"] * 1000 + 7
    out.loc[late, "cat"] = "never-seen-before"
    out.loc[late, "kind"] = np.where(rng.random(int(late.sum())) < 0.5, "complaint", "purchase")
    extra = out.loc[late].copy()
    extra["ts"] = extra["ts"] + pd.Timedelta(minutes=1)
    at_cutoff = out.groupby("cid").head(1).copy() if add_at_cutoff else out.head(0)
    at_cutoff["ts"] = pd.Timestamp(at)  # exactly at the cutoff: not history, must not leak
    newcomers = extra.head(5).assign(cid=lambda f: "zz-new-" + f["cid"])
    return pd.concat([out, extra, at_cutoff, newcomers], ignore_index=True).sample(frac=1, random_state=1)


# -- aggregates by hand --------------------------------------------------------------------------------------
AGGREGATE_SPEC = AggregateSpec.from_config(
    {
        "windows": [7, 30],
        "amount": "amount",
        "purchase_when": "kind == 'purchase'",
        "count_values": ["kind:complaint"],
        "mix_field": "cat",
        "mix_top_k": 2,
        "numeric_summaries": ["amount"],
        "recent_days": 30,
    }
)


def aggregate_table(
    rows: list[tuple],
    cutoff: str = "2024-04-01",
    customers: pd.DataFrame | None = None,
    featurizer: AggregateFeaturizer | None = None,
) -> tuple[pd.DataFrame, AggregateFeaturizer]:
    """The AGGREGATE_SPEC features of `rows` (cid, ts, kind, cat, amount) at `cutoff`, one row per customer
    id, and the featurizer (fitted here unless one is given)."""
    frame = pd.DataFrame(rows, columns=["cid", "ts", "kind", "cat", "amount"])
    loaded = load_events("e.csv", EventSchema.from_config(SCHEMA_CFG), frame=frame, end_date="2030-01-01")
    log = EventLog.from_frame(loaded.frame)
    snap = build_snapshot(log, cutoff, horizon_days=None)
    feat = featurizer or AggregateFeaturizer(AGGREGATE_SPEC).fit(log, snap, customers)
    table = feat.transform(log, snap, customers)
    return table.to_frame().set_index(snap.customer_ids(log)), feat


AGGREGATE_ROWS = [
    # a: bought 60, 20 and 5 days before the cutoff (two lines on the last day), then complained.
    ("a", "2024-02-01", "purchase", "x", 10.0),
    ("a", "2024-03-12", "purchase", "x", 30.0),
    ("a", "2024-03-27", "purchase", "y", 5.0),
    ("a", "2024-03-27", "purchase", "z", 5.0),
    ("a", "2024-03-30", "complaint", None, None),
    # b: a single purchase long ago.
    ("b", "2023-10-03", "purchase", "y", 100.0),
]


# -- encoded sequences by hand -------------------------------------------------------------------------------
def encoded_sequences(lengths: list[int]) -> EncodedSequences:
    """One row per length: event ids 1, 2, ... across rows (second field 7), numeric value id / 10, labels
    alternating 0/1."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n_events = int(offsets[-1])
    cat = np.stack([np.arange(1, n_events + 1), np.full(n_events, 7)], axis=1).astype(np.int32)
    num = np.arange(n_events, dtype=np.float32)[:, None] / 10
    n = len(lengths)
    return EncodedSequences(
        offsets,
        cat,
        num,
        np.ones((n, 1), np.int32),
        np.zeros((n, 2), np.float32),
        np.arange(n, dtype=np.float32) % 2,
        np.array([f"c{i}" for i in range(n)], dtype=object),
        np.full(n, np.datetime64("2024-01-01"), dtype="datetime64[ns]"),
        np.arange(n_events, dtype=np.float32) + 1,
        np.arange(n_events) % 2 == 0,
        np.ones(n, np.float32),
    )


# -- BG/NBD simulation ---------------------------------------------------------------------------------------
CDNOW_BGNBD = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)
"""The CDNOW estimates of Fader, Hardie & Lee (2005), α and β from weeks to days."""


def simulate_bgnbd(
    params: BGNBDParams, T: np.ndarray, horizon: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """BG/NBD histories from a first purchase at t = 0: (x, tx) observed up to T, whether the customer is
    alive at T and their purchases in (T, T + horizon]. Exponential gaps at rate λ; after each repeat
    purchase death with probability p."""
    n = len(T)
    lam = rng.gamma(params.r, 1.0 / params.alpha, n)
    p = rng.beta(params.a, params.b, n)
    t, x, tx, later = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    alive = np.ones(n, dtype=bool)
    active = np.arange(n)
    while len(active):
        t[active] += rng.exponential(1.0, len(active)) / lam[active]
        active = active[t[active] <= T[active] + horizon]
        inside = t[active] <= T[active]
        x[active[inside]] += 1
        tx[active[inside]] = t[active[inside]]
        later[active[~inside]] += 1
        dies = rng.random(len(active)) < p[active]
        alive[active[dies & inside]] = False
        active = active[~dies]
    return x, tx, alive, later


def worst_z(predicted: np.ndarray, observed: np.ndarray) -> float:
    """The largest |mean prediction - mean outcome| in standard errors of the outcome's mean, overall and in
    quintiles of the prediction (rank groups, so ties cannot empty a quintile). A prediction that is the
    conditional expectation of the outcome gives |z| beyond 4 about once in 10^4 per group."""
    groups = [np.arange(len(predicted)), *np.array_split(np.argsort(predicted, kind="stable"), 5)]
    return max(
        abs(predicted[g].mean() - observed[g].mean()) / max(observed[g].std() / np.sqrt(len(g)), 1e-12)
        for g in groups
    )


# -- the malformed-input corpus and scoring ------------------------------------------------------------------
BAD_INPUTS = REPO / "tests" / "data" / "bad"
"""The malformed-input corpus, written by scripts/make_bad_inputs.py."""
BAD_INPUT_CASES: dict[str, dict[str, Any]] = json.loads((BAD_INPUTS / "cases.json").read_text())
"""What must happen to each case of the corpus, by case name."""
SCORE_OPTIONS: dict[str, Any] = dict(device="cpu", drivers={"steps": 2})
"""The tests' ScoreJob options (score_file runs with progress=False)."""


def score_model_data(model: Path, out: Path, as_of: str, **options: Any) -> pd.DataFrame:
    """What `score_file` writes to `out` for the customers of the data a fixture model was trained on (its
    run's `data/` folder), with SCORE_OPTIONS updated by `options`."""
    data = model.parent.parent / "data"
    job = ScoreJob(
        model_path=model,
        events_path=data / "events.parquet",
        customers_path=data / "customers.parquet",
        output_path=out,
        as_of=as_of,
        **{**SCORE_OPTIONS, **options},
    )
    score_file(job, progress=False)
    return pd.read_parquet(out)


MONITOR_THRESHOLDS = {
    "psi": {"warn": 0.1, "retrain": 0.25, "tolerate_training_drift": True},
    "oov_increase": {"warn": 0.01, "retrain": 0.05},
    "volume_ratio": {"warn": 1.25, "retrain": 1.5},
    "population_ratio": {"warn": 1.5, "retrain": None},
    "tier_share": {"warn": 0.05, "retrain": None},
    "freshness": {"warn": 3, "retrain": None},
}
"""Drift thresholds for the monitor tests (the shipped defaults' shape)."""


# -- fuzz budgets --------------------------------------------------------------------------------------------
FUZZ_BUDGETS = [
    pytest.param(120, id="bounded"),
    pytest.param(3000, id="long", marks=pytest.mark.slow),
]
"""Every hypothesis property runs bounded in `make test` and long under `make test-slow`:

    @pytest.mark.parametrize("budget", FUZZ_BUDGETS)
    def test_something(budget: int) -> None:
        @given(st.text())
        def prop(text: str) -> None: ...
        run_fuzz(prop, budget)
"""


def run_fuzz(prop: Callable[[], None], budget: int) -> None:
    """Run a @given property for `budget` examples, no deadline (CI machines differ), no example database
    (a clean clone must behave like any other)."""
    settings(
        max_examples=budget,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )(prop)()


# -- scripts in subprocesses, killed where it hurts ----------------------------------------------------------
def script_command(name: str, *overrides: str) -> list[str]:
    """The command line that runs scripts/`name`.py with Hydra `overrides`."""
    return [sys.executable, str(REPO / "scripts" / f"{name}.py"), *overrides]


def run_in_repo(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `cmd` from the repository root, its output captured as text."""
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def hidden_names(folder: Path) -> list[str]:
    """Temp files and scratch dirs (hidden names) in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


KILL_AT_RENAME = """
import os, runpy, signal, sys
target, nth = os.path.abspath(sys.argv[1]), int(sys.argv[2])
seen = []
def hook(event, args):  # os.replace raises the os.rename audit event (a no-overwrite write links instead):
    # die just before the nth rename onto target, the new file complete under its temp name
    if event in ("os.rename", "os.link") and os.path.abspath(os.fsdecode(args[1])) == target:
        seen.append(args[0])
        if len(seen) == nth:
            os.kill(os.getpid(), signal.SIGKILL)
sys.addaudithook(hook)
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_killed_at_rename(target: Path, nth: int, cmd: list[str]) -> None:
    """Run a script (`cmd` from `script_command`) to be killed just before its `nth` rename onto `target`."""
    killed = run_in_repo([sys.executable, "-c", KILL_AT_RENAME, str(target), str(nth), *cmd[1:]])
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]


# -- edited copies of a model file ---------------------------------------------------------------------------
def rewrite_model(
    src: Path,
    dst: Path,
    *,
    meta: Callable[[dict[str, Any]], None] | None = None,
    module: Callable[[torch.jit.ScriptModule], None] | None = None,
) -> Path:
    """A copy of the model file `src` at `dst` whose metadata `meta` edited (its checksum recomputed) and
    whose TorchScript module `module` edited; every other inside file as it was, no signature."""
    from churnwatch.artifact.model_file import CHECKSUM_FILE, META_FILE, OFFERS_FILE

    extra = {META_FILE: "", CHECKSUM_FILE: "", OFFERS_FILE: ""}
    net = torch.jit.load(str(src), _extra_files=extra)
    if module is not None:
        with torch.no_grad():
            module(net)
    text = extra[META_FILE].decode() if isinstance(extra[META_FILE], bytes) else extra[META_FILE]
    if meta is not None:
        edited = json.loads(text)
        meta(edited)
        text = json.dumps(edited, indent=1, sort_keys=True)
    files = {k: v for k, v in extra.items() if k == OFFERS_FILE and v}
    files.update({META_FILE: text, CHECKSUM_FILE: hashlib.sha256(text.encode()).hexdigest()})
    torch.jit.save(net, str(dst), _extra_files=files)
    return dst
