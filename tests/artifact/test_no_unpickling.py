"""Nothing is unpickled: a model or checkpoint file carrying a pickle payload never runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from churnwatch.artifact.export import load_checkpoint
from churnwatch.artifact.model_file import load_artifact
from churnwatch.errors import ArtifactError


class _Payload:
    """Unpickling this creates `marker`: proof that arbitrary code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_model_file_with_a_pickle_payload_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "model.pt"
    torch.save({"model": _Payload(marker)}, evil)  # a plain torch.save pickle, not TorchScript
    with pytest.raises(ArtifactError, match="not a readable churnwatch model"):
        load_artifact(evil)
    assert not marker.exists()


def test_checkpoint_with_a_pickle_payload_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": _Payload(marker)}, evil)
    with pytest.raises(Exception, match="Weights only load failed"):
        load_checkpoint(evil)
    assert not marker.exists()
    # the same file *would* run the payload through a plain unpickling load: the test can see it
    torch.load(evil, weights_only=False)
    assert marker.exists()
