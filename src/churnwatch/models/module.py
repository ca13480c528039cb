"""LightningModule: loss with class-imbalance handling, AdamW + schedule, torchmetrics per stage, and the
operating threshold and risk tiers chosen on validation (saved in the checkpoint with the weights)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import CatMetric, MeanMetric

from churnwatch.calibration import Calibrator, expected_calibration_error
from churnwatch.data.batch import EventBatch
from churnwatch.evaluation import evaluate, ranking_metrics
from churnwatch.models.encoders import ChurnNet
from churnwatch.models.thresholds import ThresholdRule, choose_operating_point

STAGES = ("train", "val", "test")


def focal_loss(logits: Tensor, target: Tensor, gamma: float, alpha: float) -> Tensor:
    """Binary focal loss (Lin et al. 2017): down-weights easy examples; alpha weighs the positive class."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    weight = alpha * target + (1 - alpha) * (1 - target)
    return (weight * (1 - p_t) ** gamma * bce).mean()


class ChurnModule(L.LightningModule):
    """Trains a ChurnNet; `features` describes the encoded inputs (sizes from the fitted encoder)."""

    def __init__(
        self,
        features: Mapping[str, Any],
        net: Mapping[str, Any],
        loss: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        thresholds: Mapping[str, Any] | None = None,
        pos_rate: float = 0.5,
        calibration: str = "temperature",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = ChurnNet(
            cat_cardinalities=list(features["cat_cardinalities"]),
            n_num=int(features["n_num"]),
            time_index=list(features["time_index"]),
            static_cat_cardinalities=list(features["static_cat_cardinalities"]),
            n_static_num=int(features["n_static_num"]),
            n_aggregates=int(features.get("n_aggregates", 0)),
            max_len=int(features.get("max_len", 4096)),
            **dict(net),
        )
        self.loss_cfg = {
            "kind": "bce",
            "pos_weight": "auto",
            "focal_gamma": 2.0,
            "focal_alpha": 0.25,
            **dict(loss or {}),
        }
        self.opt_cfg = {"lr": 2e-3, "weight_decay": 1e-4, **dict(optimizer or {})}
        self.sched_cfg = {
            "kind": "warmup_cosine",
            "warmup_steps": 50,
            "patience": 2,
            "factor": 0.5,
            **dict(scheduler or {}),
        }
        self.rule = ThresholdRule.from_config(thresholds)
        if calibration not in ("none", "temperature", "platt"):
            raise ValueError(
                f"calibration for a network must be none, temperature or platt, got {calibration!r}"
            )
        self.calibration_method = calibration
        pos_weight = self.loss_cfg["pos_weight"]
        if pos_weight == "auto":  # negatives per positive in the training data
            pos_weight = (1 - pos_rate) / max(pos_rate, 1e-6)
        self.register_buffer("pos_weight", torch.tensor(float(pos_weight or 1.0)))
        # The operating point lives in buffers so the best checkpoint carries the one chosen with it.
        self.register_buffer("threshold", torch.tensor(0.5))
        self.register_buffer("tier_cuts", torch.tensor([1.0, 0.5]))
        # calibration fitted on the same validation pass: p = sigmoid(slope * logit + intercept)
        self.register_buffer("calibration", torch.tensor([1.0, 0.0], dtype=torch.float64))
        # Separate metric objects per stage ("train" cannot be a ModuleDict key: it is nn.Module.train).
        # Training streams ranking metrics; validation and test keep every prediction, so the operating
        # point can be chosen on them and they are judged by `evaluate`, exactly like the baselines.
        self.train_metrics = ranking_metrics()
        self.losses = torch.nn.ModuleDict({f"{s}_": MeanMetric() for s in STAGES})
        self.probs = torch.nn.ModuleDict({f"{s}_": CatMetric() for s in ("val", "test")})
        self.targets = torch.nn.ModuleDict({f"{s}_": CatMetric() for s in ("val", "test")})
        # float64 holds row numbers exactly (float32 would not past 2**24)
        self.rows = torch.nn.ModuleDict(
            {f"{s}_": CatMetric().set_dtype(torch.float64) for s in ("val", "test")}
        )
        self.last_test: dict[str, float] = {}
        self.predictions: dict[str, np.ndarray] = {}
        """Latest calibrated val/test probabilities in split row order (for predictions.parquet)."""
        self.raw_predictions: dict[str, np.ndarray] = {}

    def forward(self, batch: EventBatch) -> Tensor:
        return self.net(
            batch.cat, batch.num, batch.lengths, batch.static_cat, batch.static_num, batch.aggregates
        )

    def loss(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.loss_cfg["kind"] == "focal":
            return focal_loss(
                logits.float(),
                target,
                float(self.loss_cfg["focal_gamma"]),
                float(self.loss_cfg["focal_alpha"]),
            )
        return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=self.pos_weight)

    def _step(self, batch: EventBatch, stage: str) -> Tensor:
        logits = self(batch)
        loss = self.loss(logits, batch.label)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"{stage} loss is {loss.item()} at step {self.global_step} (batch rows "
                f"{batch.index[:5].tolist()}...): lower model.optimizer.lr or check the inputs"
            )
        probs = torch.sigmoid(logits.detach().float())
        self.losses[f"{stage}_"].update(loss.detach(), weight=len(batch))
        if stage == "train":
            self.train_metrics.update(probs, batch.label.int())
        else:
            self.probs[f"{stage}_"].update(probs)
            self.targets[f"{stage}_"].update(batch.label)
            self.rows[f"{stage}_"].update(batch.index.to(torch.float64))
        return loss

    def training_step(self, batch: EventBatch, batch_idx: int) -> Tensor:
        loss = self._step(batch, "train")
        self.log("train/loss_step", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: EventBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: EventBatch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str, values: dict[str, float | Tensor]) -> dict[str, float]:
        values[f"{stage}/loss"] = self.losses[f"{stage}_"].compute()
        self.losses[f"{stage}_"].reset()
        # values come from torchmetrics, already synced across ranks; sync_dist only averages equal numbers
        self.log_dict(values, prog_bar=False, sync_dist=True)
        return {k: float(v) for k, v in values.items()}

    def on_train_epoch_end(self) -> None:
        values = {f"train/{k}": v for k, v in self.train_metrics.compute().items()}
        self.train_metrics.reset()
        self._log_epoch("train", values)

    @property
    def calibrator(self) -> Calibrator:
        slope, intercept = self.calibration.tolist()
        return Calibrator(self.calibration_method, slope, intercept)

    def prior_shift(self) -> float:
        """Log-odds the class weight adds to the logit (focal loss: no closed form, none assumed)."""
        return math.log(float(self.pos_weight)) if self.loss_cfg["kind"] == "bce" else 0.0

    def _evaluate(self, stage: str) -> dict[str, float]:
        """All metrics of the stage's calibrated predictions; on validation, first fit the calibration and
        choose the operating point."""
        raw = self.probs[f"{stage}_"].compute().reshape(-1).double().cpu().numpy()
        target = self.targets[f"{stage}_"].compute().reshape(-1).cpu().numpy()
        rows = self.rows[f"{stage}_"].compute().reshape(-1).cpu().numpy().astype(np.int64)
        for metric in (self.probs, self.targets, self.rows):
            metric[f"{stage}_"].reset()
        if stage == "val":
            cal = Calibrator.fit(self.calibration_method, raw, target, self.prior_shift())
            self.calibration.copy_(torch.tensor([cal.slope, cal.intercept], dtype=torch.float64))
        probs = self.calibrator(raw)
        for store, values in ((self.predictions, probs), (self.raw_predictions, raw)):
            in_order = np.full(int(rows.max()) + 1 if len(rows) else 0, np.nan)
            in_order[rows] = values
            store[stage] = in_order
        if stage == "val":
            op = choose_operating_point(probs, target, self.rule)
            self.threshold.fill_(op.threshold)
            self.tier_cuts.copy_(torch.tensor([op.high_cut, op.medium_cut]))
        out = evaluate(probs, target, float(self.threshold), stage)
        out[f"{stage}/calibration_error_raw"] = expected_calibration_error(raw, target)
        return out

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a few batches only: no operating point, no metrics
            for metric in (self.probs, self.targets, self.rows, self.losses):
                metric["val_"].reset()
            return
        self._log_epoch("val", self._evaluate("val"))

    def on_test_epoch_end(self) -> None:
        self.last_test = self._log_epoch("test", self._evaluate("test"))

    def configure_optimizers(self) -> Any:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in name or "embedding" in name else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": float(self.opt_cfg["weight_decay"])},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=float(self.opt_cfg["lr"]),
        )
        kind = self.sched_cfg["kind"]
        if kind == "none":
            return opt
        if kind == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="max",
                factor=float(self.sched_cfg["factor"]),
                patience=int(self.sched_cfg["patience"]),
            )
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/auroc"}}
        if kind != "warmup_cosine":
            raise ValueError(f"model.scheduler.kind must be warmup_cosine, plateau or none, got {kind!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(int(self.sched_cfg["warmup_steps"]), total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
