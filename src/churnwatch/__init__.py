"""churnwatch: customer-churn early warning from event histories.

The Python API (docs in README, "Python API"):

    from churnwatch import Scorer, compose, load_model, train

    run = train(compose("train", ["trainer.max_epochs=3"]))   # as `churnwatch train trainer.max_epochs=3`
    scores = Scorer(run.model_path).score(events_df)           # a DataFrame, an Arrow table or a path
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Scorer": "churnwatch.scoring.scorer",
    "load_model": "churnwatch.artifact.model_file",
    "compose": "churnwatch.config.compose",
    "train": "churnwatch.api",
    "TrainedRun": "churnwatch.api",
    "Artifact": "churnwatch.artifact.model_file",
}
__all__ = [*_API, "__version__"]


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use: `import churnwatch` alone stays cheap (no torch)."""
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'churnwatch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
