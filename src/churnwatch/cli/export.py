"""`churnwatch export ckpt_path=checkpoints/train/<run>/checkpoints/epoch_007.ckpt [output_path=model.pt]`"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from churnwatch.cli.app import command

log = logging.getLogger("churnwatch.export")


@command("export")
def main(cfg: DictConfig) -> None:
    """Export a checkpoint as one self-contained TorchScript model.pt (what score and monitor load)."""
    from churnwatch.export import export_checkpoint

    ckpt = Path(cfg.ckpt_path)
    run_dir = ckpt.resolve().parent.parent
    out = Path(cfg.output_path) if cfg.output_path else run_dir / "model.pt"
    if out.exists() and not cfg.overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=true to replace it")
    metrics_file = run_dir / "metrics.json"  # the run's test metrics travel with the model when present
    test = json.loads(metrics_file.read_text()).get("test") if metrics_file.exists() else None
    log.info("exported %s → %s", ckpt, export_checkpoint(ckpt, out, test_metrics=test))


if __name__ == "__main__":
    main()
