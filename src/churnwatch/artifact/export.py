"""Export: a training run's model file (artifact/model_file.py), from a Lightning checkpoint (networks) or a
fitted tabular baseline, with the metadata a scorer needs (artifact/metadata.py ModelMeta).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from churnwatch.artifact.metadata import ModelMeta, RunFacts
from churnwatch.artifact.model_file import ProbabilityModel, TabularProbabilityModel, write_artifact
from churnwatch.errors import ArtifactError
from churnwatch.io.signing import Key
from churnwatch.models.calibration import Calibrator
from churnwatch.models.module import ChurnModule
from churnwatch.models.recommend.offers import Offers
from churnwatch.models.thresholds import Operating


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
    facts: RunFacts | None = None,
    *,
    overwrite: bool = True,
    signing_key: Key | None = None,
    offers: Offers | None = None,
) -> Path:
    """Script the checkpoint's network and calibration and write them with their metadata, atomically, to
    `out_path`. `facts`: what the run measured (test metrics, expected tiers, the monitoring reference,
    ...; see RunFacts), as far as it is known. `overwrite=False`: an `out_path` another run wrote meanwhile
    is kept (FileExistsError). `signing_key` (signing.load_signing_key) signs the file. `offers`: the run's
    next-best-offer ranker (runs/offers.py), carried along."""
    ckpt = load_checkpoint(ckpt_path)
    module = module_from_checkpoint(ckpt)
    data_state = ckpt.get("ChurnDataModule")
    if not data_state:
        raise ArtifactError(f"{ckpt_path}: checkpoint has no fitted encoders (ChurnDataModule state)")
    hp = ckpt["hyper_parameters"]
    high, medium = map(float, module.tier_cuts.tolist())
    meta = ModelMeta.of_run(
        data=ckpt["datamodule_hyper_parameters"]["data"],
        data_state=data_state,
        op=Operating(float(module.threshold), high, medium, dict(hp.get("thresholds") or {})),
        calibrator=module.calibrator,
        features=hp["features"],
        facts=facts,
        source_checkpoint=str(ckpt_path),
        net=hp["net"],
    )
    model = ProbabilityModel(module.net, module.calibrator.layer())
    return write_artifact(model, meta.to_dict(), out_path, overwrite, signing_key, offers)


def export_tabular(
    model: TabularProbabilityModel,
    out_path: str | Path,
    *,
    estimator: str,
    data: Mapping[str, Any],
    data_state: Mapping[str, Any],
    op: Operating,
    calibrator: Calibrator,
    facts: RunFacts | None = None,
    overwrite: bool = True,
    signing_key: Key | None = None,
    offers: Offers | None = None,
) -> Path:
    """A tabular baseline's model.pt: `model` with the metadata a network's carries (`data` and
    `data_state`: the data config and the datamodule's fitted encoders, ChurnDataModule.state_dict), plus
    `kind: tabular`, the estimator's name and `features.raw_aggregates`: scoring hands it the filled,
    unscaled aggregate table."""
    meta = ModelMeta.of_run(
        data=data,
        data_state=data_state,
        op=op,
        calibrator=calibrator,
        features={"n_aggregates": int(model.aggregate_mean.shape[0]), "raw_aggregates": True},
        facts=facts,
        estimator=estimator,
    )
    return write_artifact(model, meta.to_dict(), out_path, overwrite, signing_key, offers)


