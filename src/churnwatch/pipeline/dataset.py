"""From a data config to encoded train/val/test splits: contract → snapshots → split → fit → encode.

Data flows one way. Encoders and aggregate statistics are fitted on the training split only, then the
same fitted objects transform validation and test (and, later, scoring) data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from churnwatch.config.schema import DataConfig, VocabConfig, default_of
from churnwatch.data.loaders import LoadedEvents, load_customers, load_events, load_labels
from churnwatch.data.schema import CustomerSchema, EventSchema
from churnwatch.data.snapshots import (
    EventLog,
    SnapshotPlan,
    Snapshots,
    build_snapshots,
    customer_weights,
    label_event_mask,
)
from churnwatch.data.splits import customer_strata, split_customers
from churnwatch.data.validation import DEFAULT_POLICY, JoinReport, ValidationReport
from churnwatch.errors import ConfigError
from churnwatch.features.aggregates import AggregateFeaturizer, AggregateSpec, AggregateTable
from churnwatch.features.encode import Allocator, EncodedSequences, SequenceEncoder
from churnwatch.features.time_to_event import fill_time_to_event
from churnwatch.features.window import VisitSpec
from churnwatch.io.object_store import is_url

log = logging.getLogger(__name__)
DATA_REPORT = "data_report.json"


def as_dict(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    """A resolved plain dict from a DictConfig (or a copy of a plain mapping)."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


@dataclass
class Split:
    """One split's snapshot rows, encoded sequences and aggregate features, row-aligned."""

    snaps: Snapshots
    seqs: EncodedSequences
    aggregates: AggregateTable

    def __len__(self) -> int:
        return len(self.snaps)


@dataclass
class ChurnData:
    """Everything training needs, plus the fitted encoders scoring will reuse."""

    _log: EventLog | Callable[[], EventLog]
    """The event log, or how to get it: a cache hit converts its memory-mapped events only on first use."""
    customers: pd.DataFrame | None
    plan: SnapshotPlan
    encoder: SequenceEncoder
    featurizer: AggregateFeaturizer
    train: Split
    val: Split
    test: Split | None
    reports: list[ValidationReport] = field(default_factory=list)

    @property
    def log(self) -> EventLog:
        """The validated event log (insights, drivers and predictions read it after training)."""
        if not isinstance(self._log, EventLog):
            self._log = self._log()
        return self._log

    def sizes(self) -> dict[str, int]:
        """Rows and customers per split (recorded in metrics.json; the x axis of learning curves)."""
        out = {}
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            if split is not None:
                out[f"{name}_rows"] = len(split)
                out[f"{name}_customers"] = int(len(np.unique(split.snaps.customer)))
        return out

    def summary(self) -> dict[str, Any]:
        """Sizes, churn rates and validation counts, JSON-able."""

        def split_info(s: Split | None) -> dict[str, Any] | None:
            if s is None:
                return None
            per_cutoff = s.snaps.summary()
            return {
                "rows": len(s),
                "customers": int(len(np.unique(s.snaps.customer))),
                "churn_rate": float(np.nanmean(s.snaps.label)) if len(s) else None,
                "events": int(len(s.seqs.cat)),
                "per_cutoff": {
                    str(pd.Timestamp(k).date()): {
                        "customers": int(v.customers),
                        "churn_rate": round(float(v.churn_rate), 4),
                    }
                    for k, v in per_cutoff.iterrows()
                },
            }

        size = getattr(self._log, "size", None)  # a cache entry's, read without converting its log
        events, customers = size if size is not None else (len(self.log), self.log.n_customers)
        return {
            "validation": [r.as_dict() for r in self.reports],
            "events": events,
            "customers": customers,
            "train_cutoffs": [str(c.date()) for c in self.plan.train_cutoffs],
            "test_cutoff": str(self.plan.test_cutoff.date()) if self.plan.test_cutoff is not None else None,
            "horizon_days": self.plan.horizon_days,
            "train": split_info(self.train),
            "val": split_info(self.val),
            "test": split_info(self.test),
            "sequence_features": {
                "categorical": dict(zip(self.encoder.cat_names, self.encoder.cat_cardinalities, strict=True)),
                "numeric": self.encoder.num_names,
                "static_categorical": dict(
                    zip(self.encoder.static_cat_names, self.encoder.static_cat_cardinalities, strict=True)
                ),
                "static_numeric": self.encoder.static_num_names,
                "max_len": self.encoder.max_len,
            },
            "aggregate_features": self.train.aggregates.names,
        }

    def write_report(self, run_dir: str | Path) -> Path:
        """`summary()` as data_report.json in a run dir: what validation dropped, per reason with an example
        row, is on record next to the run it shaped."""
        path = Path(run_dir) / DATA_REPORT
        path.write_text(json.dumps(self.summary(), indent=2, default=str))
        return path


def load_sources(
    cfg: Mapping[str, Any],
) -> tuple[LoadedEvents, pd.DataFrame | None, pd.DataFrame | None, list[ValidationReport]]:
    """Events, customers and labels as the config maps them, validated."""
    events = load_event_table(cfg, ensure_events(cfg))
    reports = [events.report]
    customers = None
    if cfg.get("customers_path"):
        customers, report = load_customer_table(cfg, events.schema)
        reports.append(report)
        JoinReport.of(events.input_ids, customers.index).check(cfg["customers_path"])
    labels = load_label_table(cfg, events.schema) if cfg.get("labels_path") else None
    return events, customers, labels, reports


def load_label_table(cfg: Mapping[str, Any], schema: EventSchema) -> pd.DataFrame:
    """The explicit labels file (`labels_path`) as the config names its columns."""
    names = {**default_of(DataConfig, "labels"), **(cfg.get("labels") or {})}
    return load_labels(cfg["labels_path"], schema.customer_id, names["cutoff"], names["label"])


def load_event_table(
    cfg: Mapping[str, Any], path: str | Path, frame: pd.DataFrame | None = None
) -> LoadedEvents:
    """The events as the config maps and validates them: the file at `path`, or `frame`, one
    customer-disjoint part of it (a cluster's)."""
    return load_events(
        path,
        EventSchema.from_config(cfg),
        policy=cfg.get("policy", DEFAULT_POLICY),
        end_date=cfg.get("end_date"),
        row_filter=cfg.get("filter"),
        derived=cfg.get("derived"),
        frame=frame,
        part=frame is not None,
    )


def load_customer_table(
    cfg: Mapping[str, Any], schema: EventSchema, frame: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, ValidationReport]:
    """The customers file (or `frame`, one part of it) as the config maps and validates it."""
    return load_customers(
        cfg["customers_path"],
        CustomerSchema.from_config(cfg.get("customers")),
        id_column=schema.customer_id,
        timezone=schema.timezone,
        policy=cfg.get("policy", DEFAULT_POLICY),
        frame=frame,
        end_date=cfg.get("end_date"),
    )


def ensure_events(cfg: Mapping[str, Any]) -> str | Path:
    """The events path, after generating synthetic data there if it is missing and `generate` is set (a
    URL is read as it is)."""
    if is_url(cfg["events_path"]):
        return cfg["events_path"]
    events_path = Path(cfg["events_path"])
    if not events_path.exists() and cfg.get("generate"):
        _generate(events_path.parent, cfg["generate"])
    return events_path


def _generate(out_dir: Path, params: Mapping[str, Any]) -> None:
    from churnwatch.data import synthetic

    log.info("%s has no events file: generating synthetic data there (%s)", out_dir, dict(params))
    synthetic.write(synthetic.generate(**params), out_dir)


def sample_weighting(cfg: Mapping[str, Any]) -> str:
    weighting = str(cfg.get("sample_weight") or DataConfig.sample_weight)
    if weighting not in ("none", "customer"):
        raise ConfigError(f"data.sample_weight must be none or customer, got {weighting!r}")
    return weighting


def unfitted_encoders(
    cfg: Mapping[str, Any], schema: EventSchema, with_customers: bool
) -> tuple[SequenceEncoder, AggregateFeaturizer]:
    """The sequence encoder and the aggregate featurizer the data config describes, before fitting."""
    vocab = cfg.get("vocab") or {}
    customer_schema = CustomerSchema.from_config(cfg.get("customers")) if with_customers else CustomerSchema()
    encoder = SequenceEncoder(
        schema,
        customer_schema,
        max_len=int(cfg.get("max_len", DataConfig.max_len)),
        min_count=int(vocab.get("min_count", VocabConfig.min_count)),
        max_vocab=vocab.get("max_size"),
        visits=VisitSpec.from_config(cfg.get("visits")),
        max_span_days=cfg.get("max_span_days"),
    )
    featurizer = AggregateFeaturizer(
        AggregateSpec.from_config(cfg.get("aggregates")),
        customer_schema.categorical,
        [f.name for f in customer_schema.numeric],
        customer_schema.dates,
    )
    return encoder, featurizer


@dataclass(frozen=True)
class SplitEncoding:
    """How snapshot rows become a Split: the fitted encoder and featurizer, and the time-to-event targets'
    horizon and activity events."""

    encoder: SequenceEncoder
    featurizer: AggregateFeaturizer
    horizon_days: int
    activity: np.ndarray | None

    def encode(
        self,
        log: EventLog,
        snaps: Snapshots,
        customers: pd.DataFrame | None,
        weighted: bool = False,
        alloc: Allocator | None = None,
    ) -> Split:
        """`weighted`: each row weighs 1 / its customer's rows (`customer_weights`), else 1."""
        seqs = self.encoder.transform(log, snaps, customers, alloc=alloc)
        fill_time_to_event(seqs, self.encoder, log, snaps, self.horizon_days, self.activity)
        if weighted:
            seqs.weight[:] = customer_weights(snaps)
        return Split(snaps, seqs, self.featurizer.transform(log, snaps, customers))


def encode_data(cfg: Mapping[str, Any], alloc_for: Callable[[str], Allocator] | None = None) -> ChurnData:
    """The data path itself, uncached; `alloc_for(split)` places each split's per-event arrays (the cache
    passes memory-mapped files)."""
    events, customers, labels, reports = load_sources(cfg)
    event_log = EventLog.from_frame(events.frame)
    plan = SnapshotPlan.from_config(cfg)
    label_mask = label_event_mask(event_log.frame, cfg.get("label_events"))
    train_all = build_snapshots(event_log, plan.train_cutoffs, plan, labels, label_mask, events.data_end)
    train_customers, val_customers = split_customers(cfg, *customer_strata(train_all))
    train_idx = np.flatnonzero(np.isin(train_all.customer, train_customers))
    val_idx = np.flatnonzero(np.isin(train_all.customer, val_customers))
    train_snaps, val_snaps = train_all.subset(train_idx), train_all.subset(val_idx)
    test_snaps = None
    if plan.test_cutoff is not None:
        test_snaps = build_snapshots(event_log, [plan.test_cutoff], plan, labels, label_mask, events.data_end)

    weighting = sample_weighting(cfg)
    encoder, featurizer = unfitted_encoders(cfg, events.schema, customers is not None)
    encoder.fit(event_log, train_snaps, customers)
    featurizer.fit(event_log, train_snaps, customers)

    encoding = SplitEncoding(encoder, featurizer, plan.horizon_days, label_mask)

    def split(name: str, snaps: Snapshots) -> Split:
        alloc = alloc_for(name) if alloc_for is not None else None
        weighted = name == "train" and weighting == "customer"
        return encoding.encode(event_log, snaps, customers, weighted, alloc)

    return ChurnData(
        event_log,
        customers,
        plan,
        encoder,
        featurizer,
        split("train", train_snaps),
        split("val", val_snaps),
        split("test", test_snaps) if test_snaps is not None else None,
        reports,
    )
