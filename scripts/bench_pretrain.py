"""Frozen CoLES embeddings + LightGBM: does self-supervised pretraining add to the aggregates?

    python scripts/bench_pretrain.py experiment=online_retail_lstm pretrain=coles [train overrides]

Builds the data and the network of that train config, pretrains it with CoLES (or reuses the pretrained
file, as `churnwatch train ... pretrain=coles` does), embeds every train/val/test row with the frozen
sequence layers (the pooled vector the churn head reads), and fits LightGBM on the aggregates alone and on
aggregates + embeddings (conf/model/lightgbm.yaml's settings; the test cutoff's rows only for the final
figure). Prints validation and test AUROC of both.
"""

from __future__ import annotations

import sys

import lightgbm
import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from churnwatch.api import compose
from churnwatch.models.coles import ColesModule
from churnwatch.pipeline.batch import pad_batch
from churnwatch.pipeline.datamodule import ChurnDataModule
from churnwatch.runs.pretrain import pretrain_encoder
from churnwatch.runs.train import build_module


@torch.inference_mode()
def embed(module: ColesModule, split) -> np.ndarray:
    out = []
    for start in range(0, len(split.seqs), 512):
        rows = np.arange(start, min(start + 512, len(split.seqs)))
        out.append(module.embed(pad_batch(split.seqs, rows)).numpy())
    return np.concatenate(out)


def main(overrides: list[str]) -> None:
    cfg = compose("train", overrides)
    dm = ChurnDataModule(cfg.data)
    dm.setup("fit")
    data = dm.data
    net = build_module(cfg, dm).net
    path = pretrain_encoder(cfg, data, net)
    module = ColesModule(net).eval()
    params = OmegaConf.to_container(compose("train", ["model=lightgbm"]).model.params)
    print(f"pretrained encoder: {path}")
    print("| features | val AUROC | test AUROC |\n| --- | ---: | ---: |")
    emb = {s: embed(module, getattr(data, s)) for s in ("train", "val", "test")}
    for name, with_emb in (("aggregates", False), ("aggregates + CoLES embeddings", True)):
        x = {
            s: np.hstack([getattr(data, s).aggregates.values, emb[s]])
            if with_emb
            else getattr(data, s).aggregates.values
            for s in ("train", "val", "test")
        }
        model = lightgbm.LGBMClassifier(random_state=int(cfg.seed), verbose=-1, n_jobs=1, **params)
        model.fit(x["train"], data.train.snaps.label.astype(int))
        auc = {
            s: roc_auc_score(getattr(data, s).snaps.label, model.predict_proba(x[s])[:, 1])
            for s in ("val", "test")
        }
        print(f"| {name} | {auc['val']:.4f} | {auc['test']:.4f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
