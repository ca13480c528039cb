"""The Lightning DataModule serves consistent EventBatches for train/val/test."""

from __future__ import annotations

import pytest
import torch

from churnwatch.pipeline.batch import EventBatch
from churnwatch.pipeline.datamodule import ChurnDataModule
from tests.helpers import leakage_cfg, make_events


def test_datamodule_loaders_yield_padded_batches(tmp_path):
    path = tmp_path / "events.parquet"
    make_events(n_customers=80, seed=4).to_parquet(path)
    cfg = {**leakage_cfg(path), "batch_size": 16, "eval_batch_size": 32, "use_aggregates": True}
    dm = ChurnDataModule(cfg)
    dm.setup("fit")
    n_agg = len(dm.data.train.aggregates.names)
    seen = 0
    for batch in dm.train_dataloader():
        assert isinstance(batch, EventBatch)
        assert batch.cat.shape[:2] == batch.num.shape[:2]
        assert int(batch.lengths.max()) == batch.cat.shape[1] <= cfg["max_len"]
        assert (batch.cat[~batch.mask] == 0).all() and (batch.cat[batch.mask][:, 0] > 0).all()
        assert batch.aggregates.shape == (len(batch), n_agg) and torch.isfinite(batch.aggregates).all()
        seen += len(batch)
    assert seen == len(dm.data.train)
    val_rows = torch.cat([b.index for b in dm.val_dataloader()])
    assert sorted(val_rows.tolist()) == list(range(len(dm.data.val)))  # every validation row exactly once
    test_batch = next(iter(dm.test_dataloader()))
    assert len(test_batch) == min(32, len(dm.data.test))
    assert dm.hparams["data"]["max_len"] == cfg["max_len"]  # saved for the checkpoint


def test_recency_baseline_auroc_matches_sklearn(tmp_path):
    from sklearn.metrics import roc_auc_score

    from churnwatch.models.metrics import recency_auroc

    path = tmp_path / "events.parquet"
    make_events(n_customers=120, seed=8).to_parquet(path)
    dm = ChurnDataModule(leakage_cfg(path))
    dm.setup("fit")
    test = dm.data.test
    recency = test.aggregates.values[:, test.aggregates.names.index("days_since_last_event")]
    assert recency_auroc(test.aggregates, test.snaps.label) == pytest.approx(
        roc_auc_score(test.snaps.label, recency), abs=1e-6
    )
