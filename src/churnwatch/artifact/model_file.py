"""The model file: one self-contained TorchScript file with everything scoring needs embedded as extra
files, written and read here.

Networks are saved as `ProbabilityModel`, tabular baselines as `TabularProbabilityModel` (the estimator
scripted by models/scripted.py, on the raw aggregates), both with their calibration and the same metadata.
Loading needs only torch (`torch.jit.load`): no churnwatch model classes, no pickle, no Lightning. The
metadata is JSON with a format version and a SHA-256 checksum, checked on load with the metadata's meaning
(`check_meta`). With a signing key the file is also signed, and loading can demand that signature
(churnwatch.io.signing); it is checked on the bytes that are then loaded, before torch reads them.
Making one from a training run is artifact/export.py's job.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from churnwatch.artifact.checks import check_meta
from churnwatch.artifact.metadata import FORMAT_VERSION
from churnwatch.errors import ArtifactError
from churnwatch.io.atomic import atomic_path
from churnwatch.io.object_store import is_url, read_url
from churnwatch.io.signing import Key, Verification, sign_file
from churnwatch.models.calibration import EPS, CalibrationLayer, Calibrator
from churnwatch.models.recommend.offers import Offers, OfferSpec
from churnwatch.models.scripted import Scripted

META_FILE = "churnwatch/metadata.json"
CHECKSUM_FILE = "churnwatch/metadata.sha256"
OFFERS_FILE = "churnwatch/offers.pt"
"""The offer ranker, a TorchScript file of its own inside the model file; its SHA-256 is in the metadata
(`offers.sha256`), so the metadata's checksum covers it."""


@contextmanager
def _quiet_jit():
    """TorchScript is our artifact format; torch 2.13 marks its API deprecated on every call."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\..*` is deprecated", category=DeprecationWarning
        )
        yield


class ProbabilityModel(nn.Module):
    """What the artifact runs: the network plus its calibration, so its output is the churn probability."""

    def __init__(self, net: nn.Module, calibration: CalibrationLayer | None = None):
        super().__init__()
        self.net = net
        self.calibration = calibration if calibration is not None else Calibrator().layer()

    def forward(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        return self.calibration(self.net(cat, num, lengths, static_cat, static_num, aggregates))

    @torch.jit.export
    def embed(self, cat: Tensor, static_cat: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.net.embed(cat, static_cat)

    @torch.jit.export
    def reference_embeddings(self) -> tuple[list[Tensor], list[Tensor]]:
        return self.net.reference_embeddings()

    @torch.jit.export
    def logit_from_embedded(
        self,
        embedded: list[Tensor],
        num: Tensor,
        lengths: Tensor,
        static_embedded: list[Tensor],
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        """The uncalibrated logit from embedded inputs: what scoring attributes the drivers to."""
        return self.net.logit_from_embedded(embedded, num, lengths, static_embedded, static_num, aggregates)

    @torch.jit.export
    def survival(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
        horizons: Tensor,
    ) -> Tensor:
        """P(no activity within each of `horizons` days after the cutoff), (B, H), from the time-to-event
        head of a network trained with model.tte (uncalibrated): one model, any horizon."""
        return self.net.survival(cat, num, lengths, static_cat, static_num, aggregates, horizons)

    @torch.jit.export
    def demand(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
        days: int,
    ) -> Tensor:
        """Expected activities within `days` days after the cutoff and P(at least one), (B, 2)."""
        return self.net.demand(cat, num, lengths, static_cat, static_num, aggregates, days)


class TabularProbabilityModel(nn.Module):
    """What a tabular baseline's artifact runs: the scripted estimator on the raw aggregates, then its
    calibration. It takes every churnwatch model's inputs and reads only the aggregates."""

    def __init__(self, estimator: Scripted, calibrator: Calibrator, aggregate_mean: np.ndarray):
        super().__init__()
        self.estimator = estimator
        self.calibration = calibrator.layer()
        # Platt and temperature scaling read the logit of p clipped to [EPS, 1 - EPS], as Calibrator does;
        # isotonic and none read p itself (a tree's exact 0 stays 0)
        self.clip = EPS if calibrator.method in ("temperature", "platt") else 0.0
        self.eps = EPS
        self.register_buffer("aggregate_mean", torch.as_tensor(np.asarray(aggregate_mean, dtype=np.float64)))

    def forward(
        self,
        cat: Tensor,
        num: Tensor,
        lengths: Tensor,
        static_cat: Tensor,
        static_num: Tensor,
        aggregates: Tensor,
    ) -> Tensor:
        return self.calibration(torch.logit(self.estimator(aggregates), self.clip))

    @torch.jit.export
    def attribute(self, aggregates: Tensor) -> Tensor:
        """(rows, aggregates): how far each aggregate moves the uncalibrated log-odds from what they are with
        it at its training mean (occlusion), what scoring attributes the drivers to."""
        base = torch.logit(self.estimator(aggregates), self.eps).unsqueeze(1)
        return base - torch.logit(self.estimator.occluded(aggregates, self.aggregate_mean), self.eps)


def tabular_attribution(
    model: Any, aggregates: np.ndarray, batch_size: int = 256, device: str | torch.device = "cpu"
) -> np.ndarray:
    """`model.attribute` (a TabularProbabilityModel, scripted or not) of every row, in batches."""
    out = np.zeros(aggregates.shape, dtype=np.float64)
    with torch.inference_mode():
        for i in range(0, len(aggregates), batch_size):
            batch = torch.tensor(aggregates[i : i + batch_size], device=device)
            out[i : i + batch_size] = model.attribute(batch).cpu().numpy()
    return out


def write_artifact(
    model: nn.Module,
    meta: dict[str, Any],
    out_path: str | Path,
    overwrite: bool = True,
    signing_key: Key | None = None,
    offers: Offers | None = None,
) -> Path:
    """`model` scripted, with `meta` (ModelMeta.to_dict, the serialised metadata) and its checksum inside,
    written atomically to `out_path` (see export_checkpoint for `overwrite` and `signing_key`). `offers`:
    the next-best-offer ranker and its spec, carried as OFFERS_FILE and `meta["offers"]`."""
    out_path = Path(out_path)
    extra: dict[str, Any] = {}
    with _quiet_jit():
        scripted = torch.jit.script(model.eval())
        if offers is not None:
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.script(offers.ranker.eval()), buffer)
            extra[OFFERS_FILE] = buffer.getvalue()
            meta = {
                **meta,
                "offers": {**offers.spec.state(), "sha256": hashlib.sha256(extra[OFFERS_FILE]).hexdigest()},
            }
    text = json.dumps(meta, indent=1, sort_keys=True, default=str)
    extra.update({META_FILE: text, CHECKSUM_FILE: hashlib.sha256(text.encode()).hexdigest()})
    with atomic_path(out_path, replace=overwrite) as tmp, _quiet_jit():
        torch.jit.save(scripted, str(tmp), _extra_files=extra)
        if signing_key is not None:
            sign_file(tmp, signing_key)
    return out_path


def load_artifact(
    path: str | Path, device: str | torch.device = "cpu", verify: Verification | None = None
) -> tuple[torch.jit.ScriptModule, dict]:
    """The scripted model and its metadata; refuses unreadable, tampered, unknown-version or nonsensical
    files, and with `verify` a file its signature does not vouch for."""
    artifact = load_model(path, device, verify)
    return artifact.module, artifact.meta


def _load(
    path: str | Path, device: str | torch.device, verify: Verification | None
) -> tuple[torch.jit.ScriptModule, dict, Offers | None, str]:
    if is_url(path):  # (messages name the URL)
        data = read_url(str(path), "model_path")
    else:
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"{path}: model file not found")
        try:
            data = path.read_bytes()  # read once: what is verified is what is loaded
        except OSError as exc:
            raise ArtifactError(f"{path}: not a readable churnwatch model ({exc.strerror or exc})") from exc
    if verify is not None:
        verify.check(data, path)
    extra = {META_FILE: "", CHECKSUM_FILE: "", OFFERS_FILE: ""}
    try:
        with _quiet_jit():
            model = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(f"{path}: not a readable churnwatch model ({first})") from exc
    text = extra[META_FILE]
    text = text.decode() if isinstance(text, bytes) else text
    checksum = extra[CHECKSUM_FILE]
    checksum = checksum.decode() if isinstance(checksum, bytes) else checksum
    if not text:
        raise ArtifactError(f"{path}: no churnwatch metadata inside; export it with `churnwatch export`")
    if hashlib.sha256(text.encode()).hexdigest() != checksum:
        raise ArtifactError(f"{path}: metadata checksum mismatch: the file was modified after export")
    meta = json.loads(text)
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: model format version {version!r}, this churnwatch reads version "
            f"{FORMAT_VERSION}; re-export it with this version (churnwatch export)"
        )
    check_meta(meta, model, path)
    offers = _offers(meta, extra[OFFERS_FILE], device, path)
    return model.eval(), meta, offers, hashlib.sha256(data).hexdigest()


def _offers(meta: dict, data: str | bytes, device: str | torch.device, path: str | Path) -> Offers | None:
    """The offer ranker the metadata promises, checked against its SHA-256 there."""
    spec = meta.get("offers")
    if not spec:
        return None
    data = data.encode() if isinstance(data, str) else data
    if hashlib.sha256(data).hexdigest() != spec.get("sha256"):
        raise ArtifactError(
            f"{path}: the offer ranker ({OFFERS_FILE}) does not match its checksum in the metadata"
        )
    try:
        with _quiet_jit():
            ranker = torch.jit.load(io.BytesIO(data), map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable offer ranker ({OFFERS_FILE}): {exc}") from exc
    return Offers(OfferSpec.from_state(spec), ranker.eval())


@dataclass(frozen=True)
class Artifact:
    """An exported model file, loaded: the TorchScript module and the metadata it carries (data contract,
    fitted encoders, calibration, threshold and tiers, test metrics, versions)."""

    path: Path | str
    """The file, or its URL."""
    module: torch.jit.ScriptModule
    meta: dict[str, Any]
    offers: Offers | None = None
    """The next-best-offer ranker, when the run fitted a recommender."""
    sha256: str = ""
    """SHA-256 of the file's bytes as they were read and loaded (what a service names its model by)."""

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def test_metrics(self) -> dict[str, float]:
        return dict(self.meta.get("test_metrics") or {})


def load_model(
    path: str | Path, device: str | torch.device = "cpu", verify: Verification | None = None
) -> Artifact:
    """A model.pt (a path, or a URL: `s3://...`, io/object_store.py), checked (version, checksum, metadata,
    and with `verify` its signature) and loaded onto `device`; `Scorer` scores with it."""
    module, meta, offers, sha256 = _load(path, device, verify)
    return Artifact(path if is_url(path) else Path(path), module, meta, offers, sha256)
