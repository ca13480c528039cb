"""Checkpoints written whole, beside their final name.

Lightning's own writer stages each checkpoint in a temp file under the system temp dir and moves it into
place. When that dir is on another file system than the run dir (a tmpfs /tmp, a node-local disk under a
shared run dir) the move is a copy, and a job killed mid-copy leaves a torn `last.ckpt`, the very file a
resume reads. Here the temp file sits beside the checkpoint and is renamed onto it (`atomic_path`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from churnwatch.io.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """`TorchCheckpointIO` that writes local checkpoints through a same-dir temp file and a rename (remote
    URLs, e.g. s3://, keep Lightning's own transactional writer)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        local = isinstance(get_filesystem(path), LocalFileSystem) and "://" not in str(path)
        if storage_options is not None or not local:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
