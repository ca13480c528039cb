"""The model a service answers with, and its hot reload.

Deploying a model is renaming a new `model.pt` onto the served path (atomically, as `churnwatch train` and
`export` write it), or uploading it onto the served URL (`s3://...`: an object store replaces an object
whole). The slot notices a new file (inode, size or time changed; an object's size, time or version tag),
loads and checks it beside the serving one, and swaps it in between two batches: no request is dropped or
sees half a model. A file that fails to load (truncated, checksum or signature wrong, another contract's
features) is refused with one line in the log and in `/healthz`, and the old model keeps serving.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from churnwatch import __version__
from churnwatch.config.schema import ServeConfig
from churnwatch.io.object_store import is_url, object_stamp
from churnwatch.io.signing import Verification
from churnwatch.scoring.ranking import Ranker
from churnwatch.scoring.scorer import Scorer
from churnwatch.serving.requests import end_of_today

log = logging.getLogger(__name__)
FileStamp = tuple[Any, ...]
"""What says the model file was replaced: (inode, size, mtime in ns) of a local file, where a rename onto the
path changes the inode; (size, last written in ns, version tag) of an object at a URL."""


@dataclass(frozen=True)
class ServedModel:
    """A loaded model file, ready to score: the scorer, the per-request ranker, and what identifies it."""

    scorer: Scorer
    ranker: Ranker
    sha256: str
    stamp: FileStamp
    loaded_at: pd.Timestamp

    @property
    def meta(self) -> dict[str, Any]:
        return self.scorer.meta

    def info(self) -> dict[str, Any]:
        """What `GET /v1/model` says: which file, trained on what contract, how good, which cut-offs."""
        meta = self.meta
        data = meta["data"]
        operating = self.ranker.operating
        offers = meta.get("offers") or {}
        return {
            "path": str(self.scorer.model_path),
            "sha256": self.sha256,
            "loaded_at": self.loaded_at.isoformat(),
            "created_at": meta.get("created_at"),
            "format_version": meta.get("format_version"),
            "versions": {**(meta.get("versions") or {}), "serving churnwatch": __version__},
            "model": (meta.get("config") or {}).get("model", {}).get("name"),
            "contract": {
                "customer_id": data.get("customer_id"),
                "timestamp": data.get("timestamp"),
                "timezone": self.scorer.schema.timezone,
                "categorical": list(self.scorer.schema.categorical),
                "numeric": list(self.scorer.schema.numeric_names),
                "items": [c for c, _ in self.scorer.schema.item_columns],
                "customers": list(self.scorer.customer_schema.columns),
                "horizon_days": data.get("horizon_days"),
                "lookback_days": data.get("lookback_days"),
            },
            "metrics": meta.get("test_metrics") or {},
            "thresholds": {
                "threshold": operating.threshold,
                "high_probability": operating.high_cut,
                "medium_probability": operating.medium_cut,
                "rule": operating.rule,
                "tiers_by": "probability cut-offs (a request is not a population)",
            },
            "train_positive_rate": meta.get("train_positive_rate"),
            "offers": bool(offers),
            "device": str(self.scorer.device),
            "precision": self.scorer.precision,
        }


@dataclass(frozen=True)
class ReloadOutcome:
    status: str
    """unchanged | reloaded | refused"""
    message: str
    sha256: str
    """The model serving after the check."""


def file_stamp(path: str | Path) -> FileStamp:
    """The model file's `FileStamp` (raises OSError where nothing is there)."""
    if is_url(path):
        return object_stamp(str(path), "model_path")
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def load_served(config: ServeConfig) -> ServedModel:
    """The model file at `config.model_path` (a path or a URL), loaded and checked for serving (raises on a
    bad file)."""
    path = config.model_path if is_url(config.model_path) else Path(config.model_path)
    stamp = file_stamp(path)
    scorer = Scorer(
        path,
        device=config.device,
        batch_size=config.batch_size,
        drivers=config.drivers,
        playbook=config.playbook,
        rank_by=config.rank_by,
        value_days=config.value_days,
        precision=config.precision,
        verify=Verification.from_config(config.verify_key, config.require_signature),
    )
    warm_up(scorer)
    # a request is not a population: tiers come from the probability cut-offs training chose
    ranker = dataclasses.replace(scorer.ranker, by_capacity=False)
    return ServedModel(scorer, ranker, scorer.model_sha256, stamp, pd.Timestamp.now(tz="UTC"))


def warm_up(scorer: Scorer) -> None:
    """Score a made-up customer twice before serving: TorchScript optimises a model on its first calls and
    the attribution code loads on first use, seconds that would otherwise land on the first requests after
    a start or a reload. Best effort: a contract whose filter or derived columns need other columns than
    the declared ones is not warmed up (said in the log)."""
    schema = scorer.schema
    as_of = end_of_today(schema.timezone)
    times = [as_of - pd.Timedelta(days=d) for d in (31, 10, 3)]
    text = [c for c in (schema.visit_key, *schema.categorical, *(c for c, _ in schema.item_columns)) if c]
    frame = pd.DataFrame(
        {
            schema.customer_id: ["warm-up"] * len(times),
            schema.timestamp: times,
            **{c: ["warm-up"] * len(times) for c in text},
            **{c: [1.0] * len(times) for c in schema.numeric_names},
        }
    )
    try:
        for _ in range(2):  # the engine's path (engine.py), without attributes
            loaded = scorer.reader.read_events("<warm-up>", frame, part=False)
            inp = scorer.reader.prepare(loaded, None, as_of)
            scorer.rank(scorer.score_input(inp, progress=False))
    except Exception as exc:  # noqa: BLE001 (a made-up row may not meet every contract; serving goes on)
        log.info(
            "no warm-up for %s: %s", scorer.model_path, str(exc).strip().splitlines()[0] if str(exc) else exc
        )
    scorer.seconds.clear()


class ModelSlot:
    """Holds the serving model; `reload` swaps in a new file at the same path, or keeps the old model."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.current = load_served(config)
        """What the next batch scores with (a batch keeps the model it started with)."""
        self.refused: tuple[FileStamp, str] | None = None
        """The last file refused and why: it is not tried again until it changes."""
        self.reloads = 0
        self.changed = threading.Condition()
        """Notified after every check that found a new file (reloaded or refused)."""
        self._lock = threading.Lock()

    def reload(self, force: bool = False) -> ReloadOutcome:
        """Load the file at the path if it changed (or `force`): the new model serves from the next batch;
        a file that fails to load is refused and the current model stays. One check at a time."""
        with self._lock:
            path = self.config.model_path
            try:
                stamp = file_stamp(path)
            except OSError as exc:  # e.g. mid-way through a deployment that is not a rename
                return self._refuse(None, f"{path}: {exc.strerror or exc}")
            if not force and (stamp == self.current.stamp or (self.refused and self.refused[0] == stamp)):
                if stamp == self.current.stamp:
                    self.refused = None
                return ReloadOutcome("unchanged", "the file has not changed", self.current.sha256)
            try:
                served = load_served(self.config)
            except Exception as exc:  # noqa: BLE001 (any failure to load refuses the file, never the service)
                return self._refuse(
                    stamp, str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                )
            old = self.current.sha256
            with self.changed:
                self.current = served
                self.refused = None
                self.reloads += 1
                self.changed.notify_all()
            log.info("model reloaded: %s (sha256 %s, was %s)", path, served.sha256[:12], old[:12])
            return ReloadOutcome("reloaded", f"serving {path} (sha256 {served.sha256[:12]})", served.sha256)

    def _refuse(self, stamp: FileStamp | None, reason: str) -> ReloadOutcome:
        message = f"refused the new model file, still serving sha256 {self.current.sha256[:12]}: {reason}"
        with self.changed:
            if self.refused != (stamp, reason):  # said once per bad file, not at every check
                log.error("%s", message)
                self.refused = (stamp, reason)
            self.changed.notify_all()
        return ReloadOutcome("refused", message, self.current.sha256)
