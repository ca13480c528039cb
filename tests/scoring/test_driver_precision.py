"""Drivers are explained in the forward's precision: with bf16 (forced where the CPU has no bf16 units, so
every machine runs this path) they name the same top driver as fp32 for nearly every customer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from churnwatch.explain.drivers import explain_sequences, owners
from churnwatch.runtime.hardware import autocast, forced, threads_as_workers
from churnwatch.scoring.scorer import Scorer
from tests.helpers import SCORE_OPTIONS

AS_OF = "2024-11-01"


@pytest.mark.parametrize("units", [True, False], ids=["bf16-units", "no-bf16-units"])
def test_bf16_scoring_explains_in_bf16_and_names_the_drivers_fp32_names(model: Path, units: bool):
    data = model.parent.parent / "data"
    inputs = dict(events=data / "events.parquet", customers=data / "customers.parquet", as_of=AS_OF)
    options = {**SCORE_OPTIONS, "drivers": {"steps": 8}}
    fp32 = Scorer(model, **options, precision="fp32").score(**inputs, progress=False)
    with forced(bf16=units):
        scorer = Scorer(model, **options, precision="bf16")
        got = scorer.score(**inputs, progress=False)
    assert scorer.precision == ("bf16" if units else "fp32")  # no bf16 units: fp32, drivers and all
    fp32, got = (f.set_index("customer_id").sort_index() for f in (fp32, got))
    explained = fp32["main_driver"] != ""
    assert explained.sum() > 50
    agree = (got.loc[explained, "main_driver"] == fp32.loc[explained, "main_driver"]).mean()
    texts = ["driver_1", "driver_2", "driver_3"]
    changed = (got.loc[explained, texts] != fp32.loc[explained, texts]).any(axis=1).mean()
    if units:  # bf16's own attributions (some near-tied ranks swap), the same top driver for nearly all
        assert agree >= 0.9 and changed > 0
    else:
        assert agree == 1.0 and changed == 0


def test_batches_explained_side_by_side_get_what_each_gets_alone(model: Path):
    """On a CPU with two torch threads, integrated gradients explain two batches at a time, one thread
    each: every batch's attributions are exactly what it gets explained alone on one thread, in the
    caller's precision too (autocast is per thread, so the workers take it over), and torch gets its
    threads back."""
    data = model.parent.parent / "data"
    scorer = Scorer(model, **SCORE_OPTIONS)
    inp = scorer.load(data / "events.parquet", data / "customers.parquet", as_of=AS_OF)
    chunk = next(scorer.encode_chunks(inp, 10**6, explain=True))
    rows = np.flatnonzero(scorer.in_population(inp.log, chunk.snaps))[:300]
    names = chunk.table.names if scorer.use_aggregates else []
    owner = owners(scorer.catalogue, inp.log, chunk.snaps.subset(rows), scorer.encoder, names)
    agg = chunk.agg[rows] if chunk.agg is not None else None
    before = torch.get_num_threads()

    def explain(threads: int, bf16: bool) -> np.ndarray:
        torch.set_num_threads(threads)
        with forced(bf16=True), autocast(torch.device("cpu"), bf16):
            out = explain_sequences(scorer.model, chunk.seqs.subset(rows), owner, agg, batch_size=32, steps=4)
        assert torch.get_num_threads() == threads
        return out

    try:
        alone, side = explain(1, False), explain(2, False)
        alone_bf16, side_bf16 = explain(1, True), explain(2, True)
    finally:
        torch.set_num_threads(before)
    assert np.abs(alone).sum() > 0 and np.array_equal(alone, side)
    assert np.array_equal(alone_bf16, side_bf16) and not np.array_equal(alone_bf16, alone)
    with threads_as_workers(5, "cpu") as workers:  # one task, or a GPU: nothing changes
        assert workers == min(before, 5) and torch.get_num_threads() == (1 if before > 1 else before)
    with threads_as_workers(1, "cpu") as workers, threads_as_workers(5, "cuda") as on_gpu:
        assert workers == on_gpu == 1 and torch.get_num_threads() == before
