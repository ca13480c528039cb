"""Shared fixtures: small hand-made event logs whose every number can be checked by hand."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema

REPO = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = REPO.parent / "shared" / "data" / "online_retail" / "online_retail.parquet"

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


def train_tiny(root: Path, *overrides: str) -> dict:
    """Train and export the smallest model (300 synthetic customers, one epoch) into `root`/run; its
    metrics (best_checkpoint among them)."""
    from churnwatch.config.compose import compose
    from churnwatch.runs.train import train

    from .test_end_to_end import TINY

    sizes = [o for o in TINY if not o.startswith("data.generate.n_customers")]
    extra = [*sizes, "data.generate.n_customers=300", "report=false", "insights.enabled=false", *overrides]
    cfg = compose("train", [f"data.data_dir={root / 'data'}", f"paths.output_dir={root / 'run'}", *extra])
    (root / "run").mkdir()
    return train(cfg)


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smallest trained and exported model on synthetic data, shared by every test that scores."""
    root = tmp_path_factory.mktemp("tiny_model")
    train_tiny(root)
    return root / "run" / "model.pt"


@pytest.fixture(scope="session", autouse=True)
def encoded_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Configs composed in tests (and scripts they start) cache encoded snapshots here, never in the repo."""
    path = tmp_path_factory.mktemp("cache")
    before = os.environ.get("CHURNWATCH_CACHE_DIR")
    os.environ["CHURNWATCH_CACHE_DIR"] = str(path)
    yield path
    if before is None:
        os.environ.pop("CHURNWATCH_CACHE_DIR", None)
    else:
        os.environ["CHURNWATCH_CACHE_DIR"] = before


@pytest.fixture
def schema() -> EventSchema:
    return EventSchema.from_config(SCHEMA_CFG)


@pytest.fixture
def raw_events() -> pd.DataFrame:
    return make_events()


@pytest.fixture
def loaded(raw_events: pd.DataFrame, schema: EventSchema):
    return load_events("events.parquet", schema, frame=raw_events, end_date="2030-01-01")
