"""LightningModule: loss with class-imbalance handling, AdamW + schedule, torchmetrics per stage, and the
operating threshold and risk tiers chosen on validation (saved in the checkpoint with the weights).

A non-finite loss never trains on silently: it stops the run naming the stage, step and customers, or
(`nonfinite.action: skip`) the training batch is skipped, counted and logged, up to a share of each epoch.
Checkpoints carry the RNG state too, so a run resumed from last.ckpt repeats the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import CatMetric, MeanMetric

from churnwatch.config.schema import (
    LossConfig,
    NetConfig,
    NonfiniteConfig,
    OptimizerConfig,
    SchedulerConfig,
    TTEConfig,
    typed,
)
from churnwatch.data.validation import some_of
from churnwatch.errors import ConfigError
from churnwatch.models.calibration import Calibrator, expected_calibration_error
from churnwatch.models.encoders import ChurnNet
from churnwatch.models.metrics import evaluate, ranking_metrics
from churnwatch.models.thresholds import ThresholdRule, choose_operating_point
from churnwatch.pipeline.batch import EventBatch

log = logging.getLogger(__name__)
STAGES = ("train", "val", "test")
"""The time-to-event head: off (weight 0, not only), multi-task (weight > 0) or alone (only)."""


def focal_loss(
    logits: Tensor, target: Tensor, gamma: float, alpha: float, row_weight: Tensor | None = None
) -> Tensor:
    """Binary focal loss (Lin et al. 2017): down-weights easy examples; alpha weighs the positive class."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    weight = alpha * target + (1 - alpha) * (1 - target)
    if row_weight is not None:
        weight = weight * row_weight
    return (weight * (1 - p_t) ** gamma * bce).mean()


class ChurnModule(L.LightningModule):
    """Trains a ChurnNet; `features` describes the encoded inputs (sizes from the fitted encoder)."""

    def __init__(
        self,
        features: Mapping[str, Any],
        net: Mapping[str, Any],
        *,
        loss: Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        thresholds: Mapping[str, Any] | None = None,
        pos_rate: float = 0.5,
        calibration: str = "temperature",
        nonfinite: Mapping[str, Any] | None = None,
        tte: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.tte = asdict(typed(TTEConfig, tte, "model.tte"))
        if float(self.tte["weight"]) < 0:
            raise ConfigError(f"model.tte.weight must be >= 0, got {self.tte['weight']}")
        dense = float(self.tte["weight"]) > 0 or bool(self.tte["only"])
        self.net = ChurnNet(
            cat_cardinalities=list(features["cat_cardinalities"]),
            n_num=int(features["n_num"]),
            time_index=list(features["time_index"]),
            static_cat_cardinalities=list(features["static_cat_cardinalities"]),
            n_static_num=int(features["n_static_num"]),
            n_aggregates=int(features.get("n_aggregates", 0)),
            max_len=int(features.get("max_len", 4096)),
            tte_bins=[float(b) for b in self.tte["bins"]] if dense else None,
            tte_only=bool(self.tte["only"]),
            horizon_days=float(features.get("horizon_days", 0.0)),
            age_scale=tuple(features.get("age_scale", (0.0, 1.0))),
            **asdict(typed(NetConfig, net, "model.net")),
        )
        self.loss_cfg = asdict(typed(LossConfig, loss, "model.loss"))
        self.opt_cfg = asdict(typed(OptimizerConfig, optimizer, "model.optimizer"))
        self.sched_cfg = asdict(typed(SchedulerConfig, scheduler, "model.scheduler"))
        self.rule = ThresholdRule.from_config(thresholds)
        if calibration not in ("none", "temperature", "platt"):
            raise ConfigError(
                f"calibration for a network must be none, temperature or platt, got {calibration!r}"
            )
        self.calibration_method = calibration
        self.nonfinite = asdict(typed(NonfiniteConfig, nonfinite, "model.nonfinite"))
        if self.nonfinite["action"] not in ("fail", "skip"):
            action = self.nonfinite["action"]
            raise ConfigError(f"model.nonfinite.action must be fail or skip, got {action!r}")
        self.skipped_batches = 0
        """Training batches skipped for a non-finite loss over the whole run (kept in checkpoints)."""
        self._skipped_in_epoch = 0
        self._resume_rng: dict[str, Any] | None = None
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
        self.tte_losses = torch.nn.ModuleDict({f"{s}_": MeanMetric() for s in STAGES})
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

    def loss(self, logits: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """The churn loss, each row weighted by `weight` (data.sample_weight; mean 1 over training rows)."""
        if self.loss_cfg["kind"] == "focal":
            return focal_loss(
                logits.float(),
                target,
                float(self.loss_cfg["focal_gamma"]),
                float(self.loss_cfg["focal_alpha"]),
                weight,
            )
        return F.binary_cross_entropy_with_logits(
            logits.float(), target, weight=weight, pos_weight=self.pos_weight
        )

    def _describe(self, batch: EventBatch, stage: str, logits: Tensor, loss: Tensor) -> str:
        """Where a non-finite loss came from: stage, epoch, global step and customers (ids from the
        datamodule; row positions when the module runs without one): those whose logit is non-finite,
        else (the loss itself overflowed) the batch's first."""
        bad = ~torch.isfinite(logits.detach())
        n_bad = int(bad.sum())
        culprits = (batch.index[bad] if n_bad else batch.index).cpu().numpy()
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "customer_ids"):  # a customer has a row per cutoff: name each once
            who = f"customers {some_of(datamodule.customer_ids(stage, culprits))}"
        else:
            who = f"rows {some_of(culprits)}"
        what = f"{n_bad} row(s) with a non-finite logit" if n_bad else "all logits finite"
        return (
            f"{stage} loss is {loss.item()} at epoch {self.current_epoch}, global step {self.global_step}; "
            f"batch of {len(batch)}, {what}: {who}"
        )

    def _nonfinite(self, batch: EventBatch, stage: str, logits: Tensor, loss: Tensor) -> None:
        """Stop (`fail`), or count a skipped training batch (`skip`) and stop once more than
        `max_skipped_fraction` of this epoch's training batches were skipped."""
        where = self._describe(batch, stage, logits, loss)
        hint = "lower model.optimizer.lr or check these customers' inputs"
        if stage != "train" or self.nonfinite["action"] == "fail":
            skip_note = (
                "" if stage == "train" else " (model.nonfinite.action=skip skips training batches only)"
            )
            raise FloatingPointError(f"{where}: {hint}{skip_note}")
        self.skipped_batches += 1
        self._skipped_in_epoch += 1
        total = self.trainer.num_training_batches
        share = float(self.nonfinite["max_skipped_fraction"])
        if self._skipped_in_epoch > share * total:
            raise FloatingPointError(
                f"{where}: {self._skipped_in_epoch} of this epoch's {total} training batches had a "
                f"non-finite loss, more than model.nonfinite.max_skipped_fraction={share}; {hint}"
            )
        log.warning("%s: batch skipped (model.nonfinite.action=skip, %d so far)", where, self.skipped_batches)

    def _objective(self, batch: EventBatch) -> tuple[Tensor, Tensor]:
        """Churn logits and the loss: the churn loss, plus `tte.weight` × the hazard's negative
        log-likelihood over every step (multi-task), or that alone (`tte.only`)."""
        hazard = self.net.hazard
        if hazard is None:
            logits = self(batch)
            return logits, self.loss(logits, batch.label, batch.weight)
        logits, rates = self.net.logit_and_hazard(
            batch.cat, batch.num, batch.lengths, batch.static_cat, batch.static_num, batch.aggregates
        )
        nll = hazard.nll(rates, batch.tte, batch.tte_observed, batch.mask * batch.weight.unsqueeze(1))
        self._tte_nll = nll.detach()
        if self.tte["only"]:
            return logits, nll
        return logits, self.loss(logits, batch.label, batch.weight) + float(self.tte["weight"]) * nll

    def _step(self, batch: EventBatch, stage: str) -> Tensor | None:
        """The batch's loss, with its metrics updated; None for a skipped training batch."""
        logits, loss = self._objective(batch)
        if not torch.isfinite(loss):
            self._nonfinite(batch, stage, logits, loss)
            return None
        probs = torch.sigmoid(logits.detach().float())
        self.losses[f"{stage}_"].update(loss.detach(), weight=len(batch))
        if self.net.hazard is not None:
            self.tte_losses[f"{stage}_"].update(self._tte_nll, weight=int(batch.mask.sum()))
        if stage == "train":
            self.train_metrics.update(probs, batch.label.int())
        else:
            self.probs[f"{stage}_"].update(probs)
            self.targets[f"{stage}_"].update(batch.label)
            self.rows[f"{stage}_"].update(batch.index.to(torch.float64))
        return loss

    def training_step(self, batch: EventBatch, batch_idx: int) -> Tensor | None:
        loss = self._step(batch, "train")
        if loss is None:  # Lightning skips backward and the optimizer step
            return None
        self.log("train/loss_step", loss, prog_bar=True, batch_size=len(batch))
        return loss

    def validation_step(self, batch: EventBatch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: EventBatch, batch_idx: int) -> None:
        self._step(batch, "test")

    def _log_epoch(self, stage: str, values: dict[str, float | Tensor]) -> dict[str, float]:
        values[f"{stage}/loss"] = self.losses[f"{stage}_"].compute()
        self.losses[f"{stage}_"].reset()
        if self.net.hazard is not None:  # per step: comparable across horizons and weights
            values[f"{stage}/tte_nll"] = self.tte_losses[f"{stage}_"].compute()
            self.tte_losses[f"{stage}_"].reset()
        # values come from torchmetrics, already synced across ranks; sync_dist only averages equal numbers
        self.log_dict(values, prog_bar=False, sync_dist=True)
        return {k: float(v) for k, v in values.items()}

    def on_fit_start(self) -> None:
        if self.nonfinite["action"] == "skip" and self.trainer.world_size > 1:
            raise ConfigError(
                "model.nonfinite.action=skip needs a single process (a rank that skips a batch would leave "
                "the others waiting in the gradient all-reduce); use fail with DDP"
            )

    def on_train_epoch_start(self) -> None:
        self._skipped_in_epoch = 0
        if self._resume_rng is not None:
            # the state at the checkpoint, i.e. at the end of the previous epoch: dropout continues as if
            # the run had never stopped
            torch.set_rng_state(self._resume_rng["torch"])
            if torch.cuda.is_available() and len(self._resume_rng["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(self._resume_rng["cuda"])
            self._resume_rng = None

    def on_train_epoch_end(self) -> None:
        values = {f"train/{k}": v for k, v in self.train_metrics.compute().items()}
        self.train_metrics.reset()
        if self.nonfinite["action"] == "skip":  # with fail a non-finite loss ends the run: always 0
            values["train/skipped_batches"] = float(self.skipped_batches)
        self._log_epoch("train", values)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["skipped_batches"] = self.skipped_batches
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a fit restores the skip count and, at the next epoch's start, the RNG state; loading a
        checkpoint to validate, test or export changes neither."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != "fit":
            return
        self.skipped_batches = int(checkpoint.get("skipped_batches", 0))
        self._resume_rng = checkpoint.get("rng_states")

    @property
    def calibrator(self) -> Calibrator:
        slope, intercept = self.calibration.tolist()
        return Calibrator(self.calibration_method, slope, intercept)

    def prior_shift(self) -> float:
        """Log-odds the class weight adds to the logit (focal loss: no closed form, none assumed)."""
        weighted = self.loss_cfg["kind"] == "bce" and not self.tte["only"]  # the hazard has no class weight
        return math.log(float(self.pos_weight)) if weighted else 0.0

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
            for metric in (self.probs, self.targets, self.rows, self.losses, self.tte_losses):
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
            raise ConfigError(f"model.scheduler.kind must be warmup_cosine, plateau or none, got {kind!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(int(self.sched_cfg["warmup_steps"]), total // 2)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
