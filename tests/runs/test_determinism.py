"""Seeded CPU training repeats itself byte for byte, and a non-finite loss never trains on silently."""

from __future__ import annotations

import json
import logging
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from churnwatch.config.compose import compose
from churnwatch.features.encode import slice_events
from churnwatch.features.stats import Z_LIMIT
from churnwatch.pipeline.build import build_data
from churnwatch.pipeline.datamodule import ChurnDataModule
from churnwatch.runs.record import TIMING_KEYS, read_timings, refuse_finished_run
from churnwatch.runs.train import build_module, train
from tests.helpers import TINY


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The tiny synthetic data set, generated (and its encoding cached) once for this module."""
    path = tmp_path_factory.mktemp("determinism") / "data"
    build_data(config(path, path.parent / "unused").data)
    return path


def config(data_dir, run_dir, *extra: str):
    return compose("train", [f"data.data_dir={data_dir}", f"paths.output_dir={run_dir}", *TINY, *extra])


def test_two_seeded_cpu_runs_write_identical_metrics_and_predictions(data_dir, tmp_path):
    run, first = tmp_path / "run", tmp_path / "first"
    # the same run dir for both: metrics.json records its own paths (run_dir, best_checkpoint, report)
    run.mkdir()
    train(config(data_dir, run))
    run.rename(first)
    run.mkdir()
    train(config(data_dir, run))
    assert (run / "metrics.json").read_bytes() == (first / "metrics.json").read_bytes()
    for name in ("predictions.parquet", "drivers.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), pd.read_parquet(first / name))
    weights = [
        torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"] for d in (run, first)
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train"] == {}  # nonfinite.action=fail: no skip count to report
    assert not set(TIMING_KEYS) & (set(metrics) | set(metrics["insights"]))  # wall clock stays out
    timings = read_timings(run)
    assert set(timings) == set(TIMING_KEYS) and all(v > 0 for v in timings.values())
    # the finished run is not trained over without overwrite=true
    before = (run / "metrics.json").read_bytes()
    with pytest.raises(FileExistsError, match=r"metrics\.json exists.*overwrite=true"):
        train(config(data_dir, run))
    assert (run / "metrics.json").read_bytes() == before
    refuse_finished_run(config(data_dir, run, "overwrite=true"))  # no error: it may go ahead


def test_values_that_overflow_float32_reach_the_network_clipped_and_train(data_dir, tmp_path, caplog):
    """A price change of 1e299 passes validation (|x| <= 1e300), and, after the last training cutoff, the
    statistics fitted on training histories put it far beyond float32 once standardised: it reaches the
    network clipped to ±Z_LIMIT, with a warning, and the run trains on (it used to become inf, and the
    validation loss NaN)."""
    clean = build_data(config(data_dir, tmp_path / "unused").data)
    customer = str(clean.val.snaps.customer_ids(clean.log)[0])
    after_training = pd.Timestamp(clean.train.snaps.cutoff.max())
    bad_dir = tmp_path / "data"
    shutil.copytree(data_dir, bad_dir)
    events = pd.read_parquet(bad_dir / "events.parquet")
    late = (events["customer_id"].astype(str) == customer) & (events["timestamp"] >= after_training)
    assert late.any()
    events.loc[late, "price_delta"] = 1e299
    events.to_parquet(bad_dir / "events.parquet")
    cfg = config(bad_dir, tmp_path / "run")
    with caplog.at_level(logging.WARNING, logger="churnwatch.features.stats"):
        data = build_data(cfg.data)
    assert any("clipped to ±10000 standard deviations" in r.getMessage() for r in caplog.records)
    column = data.encoder.num_names.index("price_delta")
    seen = {}
    for name in ("train", "val", "test"):
        seqs = getattr(data, name).seqs
        assert np.isfinite(seqs.num).all()
        rows = np.flatnonzero(seqs.customer_id == customer)
        seen[name] = seqs.num[slice_events(seqs.offsets, rows), column].max() if len(rows) else 0.0
    assert seen["train"] < Z_LIMIT and max(seen["val"], seen["test"]) == Z_LIMIT
    (tmp_path / "run").mkdir()
    metrics = train(cfg)
    assert math.isfinite(metrics["val"]["val/loss"]) and math.isfinite(metrics["test"]["test/loss"])


def test_a_non_finite_validation_loss_stops_training_naming_the_customer(data_dir, tmp_path):
    """One validation row's encoded inputs hold inf. Skipping covers training batches only, so even with
    action=skip the run stops, naming the stage, the step and that customer."""
    cfg = config(data_dir, tmp_path, "model.nonfinite.action=skip")
    dm = ChurnDataModule(cfg.data)
    dm.setup()
    val_ids = dm.data.val.snaps.customer_ids(dm.data.log)
    customer = str(val_ids[0])
    rows = np.flatnonzero(val_ids == customer)
    seqs = dm.data.val.seqs
    seqs.num = np.array(seqs.num)  # a writable copy (the cache hands out read-only maps)
    seqs.num[slice_events(seqs.offsets, rows)] = np.inf
    trainer = instantiate(cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False, callbacks=[])
    with pytest.raises(FloatingPointError) as failure:
        trainer.fit(build_module(cfg, dm), datamodule=dm)
    message = str(failure.value)
    steps = math.ceil(len(dm.data.train) / int(cfg.data.batch_size))  # one epoch of training, then validation
    assert message.startswith(f"val loss is nan at epoch 0, global step {steps};")
    assert f"{len(rows)} row(s) with a non-finite logit: customers {customer}:" in message
    assert "skips training batches only" in message


def first_batch_customers(cfg) -> str:
    """How an error names the first training batch's customers: each once, the first five, then a count."""
    dm = ChurnDataModule(cfg.data)
    dm.setup()
    rows = next(iter(dm.train_dataloader())).index.numpy()
    ids = list(dict.fromkeys(dm.data.train.snaps.customer_ids(dm.data.log)[rows]))
    return f"customers {', '.join(ids[:5])} (+{len(ids) - 5} more)"


def test_a_non_finite_training_loss_fails_or_skips_up_to_the_configured_share(data_dir, tmp_path, caplog):
    """pos_weight=inf makes every training loss NaN (inf * 0 for the negatives) while logits stay finite."""
    cfg = config(data_dir, tmp_path, "model.loss.pos_weight=inf")
    named = first_batch_customers(cfg)
    with pytest.raises(FloatingPointError) as failure:
        train(cfg)
    assert str(failure.value).startswith(
        "train loss is nan at epoch 0, global step 0; batch of 128, all logits"
    )
    assert named in str(failure.value)

    share = 0.25
    skip = ["model.nonfinite.action=skip", f"model.nonfinite.max_skipped_fraction={share}"]
    cfg = config(data_dir, tmp_path, "model.loss.pos_weight=inf", *skip)
    batches = math.ceil(len(build_data(cfg.data).train) / 128)
    allowed = math.floor(share * batches)
    with (
        caplog.at_level(logging.WARNING, logger="churnwatch.models.module"),
        pytest.raises(FloatingPointError) as stop,
    ):
        train(cfg)
    stopped = f"{allowed + 1} of this epoch's {batches} training batches had a non-finite loss"
    assert stopped in str(stop.value)
    skipped = [r.getMessage() for r in caplog.records if "batch skipped" in r.getMessage()]
    assert len(skipped) == allowed
    assert skipped[0].startswith("train loss is nan at epoch 0, global step 0;") and named in skipped[0]


def test_skipped_batches_take_no_optimizer_step_and_are_counted(data_dir, tmp_path, caplog):
    """One training row's encoded inputs hold inf (what a float32 overflow of a huge raw value gives): its
    batch is skipped once per epoch, without touching the weights, and the rest of the run trains."""
    cfg = config(
        data_dir, tmp_path, "model.nonfinite.action=skip", "model.nonfinite.max_skipped_fraction=0.2"
    )
    dm = ChurnDataModule(cfg.data)
    dm.setup()
    seqs = dm.data.train.seqs
    row = int(next(iter(dm.train_dataloader())).index[0])
    seqs.num = np.array(seqs.num)  # a writable copy (the cache hands out read-only maps)
    seqs.num[slice_events(seqs.offsets, np.array([row]))] = np.inf
    customer = dm.data.train.snaps.customer_ids(dm.data.log)[row]
    model = build_module(cfg, dm)
    trainer = instantiate(cfg.trainer, max_epochs=2, logger=False, enable_checkpointing=False, callbacks=[])
    with caplog.at_level(logging.WARNING, logger="churnwatch.models.module"):
        trainer.fit(model, datamodule=dm)
    batches = 2 * trainer.num_training_batches
    assert model.skipped_batches == 2 and float(trainer.callback_metrics["train/skipped_batches"]) == 2
    steps = {int(state["step"]) for state in trainer.optimizers[0].state.values()}
    assert steps == {batches - 2}  # AdamW stepped for every batch but the two skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    skipped = [r.getMessage() for r in caplog.records if "batch skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert skipped[0].startswith("train loss is nan at epoch 0, global step 0;")
    assert f"1 row(s) with a non-finite logit: customers {customer}:" in skipped[0]
