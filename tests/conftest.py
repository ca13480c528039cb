"""Shared fixtures: small hand-made event logs whose every number can be checked by hand, and the tiny model.
The helpers behind them (and everything else test files share) are in tests/helpers.py."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from churnwatch.data.loaders import load_events
from churnwatch.data.schema import EventSchema
from tests.helpers import SCHEMA_CFG, make_events, train_tiny


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
