"""Export: one self-contained TorchScript file with everything scoring needs embedded as extra files.

Loading needs only torch (`torch.jit.load`): no churnwatch model classes, no pickle. The metadata is
JSON with a format version and a SHA-256 checksum, checked on load with the metadata's meaning
(`check_meta`). With a signing key the file is also signed, and loading can demand that signature
(churnwatch.signing); it is checked on the bytes that are then loaded, before torch reads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import warnings
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import churnwatch
from churnwatch.atomic import atomic_path
from churnwatch.calibration import CalibrationLayer, Calibrator
from churnwatch.errors import ArtifactError
from churnwatch.meta_checks import check_meta
from churnwatch.models.module import ChurnModule
from churnwatch.signing import Key, Verification, sign_file

FORMAT_VERSION = 1
META_FILE = "churnwatch/metadata.json"
CHECKSUM_FILE = "churnwatch/metadata.sha256"


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


def _versions() -> dict[str, str]:
    out = {
        "churnwatch": churnwatch.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    for pkg in ("lightning", "numpy", "pandas", "pyarrow"):
        with suppress(importlib_metadata.PackageNotFoundError):
            out[pkg] = importlib_metadata.version(pkg)
    return out


def load_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint, loaded without unpickling arbitrary objects."""
    return torch.load(ckpt_path, map_location="cpu", weights_only=True)


def module_from_checkpoint(ckpt: dict[str, Any]) -> ChurnModule:
    module = ChurnModule(**ckpt["hyper_parameters"])
    # a run with model.compile=true saved the compiled wrapper's keys (net._orig_mod.*)
    state = {k.replace("._orig_mod.", "."): v for k, v in ckpt["state_dict"].items()}
    module.load_state_dict(state)
    return module.eval()


def export_checkpoint(
    ckpt_path: str | Path,
    out_path: str | Path,
    test_metrics: dict[str, float] | None = None,
    config: dict[str, Any] | None = None,
    expected_tiers: list[dict[str, Any]] | None = None,
    segments: dict[str, Any] | None = None,
    reference: dict[str, Any] | None = None,
    drivers: dict[str, Any] | None = None,
    overwrite: bool = True,
    signing_key: Key | None = None,
) -> Path:
    """Script the checkpoint's network and calibration and write them with their metadata, atomically, to
    `out_path`. `expected_tiers`: each tier's validation precision and recall, shown to the scoring job.
    `reference`: the monitoring profile of the reference population (monitoring.training_reference).
    `overwrite=False`: an `out_path` another run wrote meanwhile is kept (FileExistsError).
    `signing_key` (signing.load_signing_key) signs the file."""
    ckpt = load_checkpoint(ckpt_path)
    module = module_from_checkpoint(ckpt)
    data_state = ckpt.get("ChurnDataModule")
    if not data_state:
        raise ArtifactError(f"{ckpt_path}: checkpoint has no fitted encoders (ChurnDataModule state)")
    hp = ckpt["hyper_parameters"]
    meta = {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_checkpoint": str(ckpt_path),
        "data": ckpt["datamodule_hyper_parameters"]["data"],
        "encoder": data_state["encoder"],
        "featurizer": data_state["featurizer"],
        "train_positive_rate": data_state["train_positive_rate"],
        "features": hp["features"],
        "net": hp["net"],
        "threshold": float(module.threshold),
        "tiers": {
            "high": float(module.tier_cuts[0]),
            "medium": float(module.tier_cuts[1]),
            "rule": dict(hp.get("thresholds") or {}),
            "expected": expected_tiers or [],
        },
        "calibration": module.calibrator.state(),
        "segments": segments or {},
        "drivers": drivers or {},
        "reference": reference,
        "test_metrics": test_metrics or {},
        "config": config or {},
        "versions": _versions(),
    }
    return write_artifact(
        ProbabilityModel(module.net, module.calibrator.layer()), meta, out_path, overwrite, signing_key
    )


def write_artifact(
    model: nn.Module,
    meta: dict[str, Any],
    out_path: str | Path,
    overwrite: bool = True,
    signing_key: Key | None = None,
) -> Path:
    out_path = Path(out_path)
    with _quiet_jit():
        scripted = torch.jit.script(model.eval())
    text = json.dumps(meta, indent=1, sort_keys=True, default=str)
    extra = {META_FILE: text, CHECKSUM_FILE: hashlib.sha256(text.encode()).hexdigest()}
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
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: model file not found")
    try:
        data = path.read_bytes()  # read once: what is verified is what is loaded
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable churnwatch model ({exc.strerror or exc})") from exc
    if verify is not None:
        verify.check(data, path)
    extra = {META_FILE: "", CHECKSUM_FILE: ""}
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
    return model.eval(), meta


@dataclass(frozen=True)
class Artifact:
    """An exported model file, loaded: the TorchScript module and the metadata it carries (data contract,
    fitted encoders, calibration, threshold and tiers, test metrics, versions)."""

    path: Path
    module: torch.jit.ScriptModule
    meta: dict[str, Any]

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def test_metrics(self) -> dict[str, float]:
        return dict(self.meta.get("test_metrics") or {})


def load_model(
    path: str | Path, device: str | torch.device = "cpu", verify: Verification | None = None
) -> Artifact:
    """A model.pt, checked (version, checksum, metadata, and with `verify` its signature) and loaded onto
    `device`; `Scorer` scores with it."""
    module, meta = load_artifact(path, device, verify)
    return Artifact(Path(path), module, meta)
