"""`churnwatch export ckpt_path=checkpoints/train/<run>/checkpoints/epoch_007.ckpt [output_path=model.pt]`"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from churnwatch.cli.app import command

log = logging.getLogger("churnwatch.artifact.export")


@command("export")
def main(cfg: DictConfig) -> None:
    """Export a checkpoint as one self-contained TorchScript model.pt (what score and monitor load)."""
    from churnwatch.artifact.export import export_checkpoint
    from churnwatch.artifact.metadata import RunFacts
    from churnwatch.io.atomic import check_output
    from churnwatch.io.signing import load_signing_key

    signing_key = load_signing_key(cfg.signing_key)
    ckpt = Path(cfg.ckpt_path)
    run_dir = ckpt.resolve().parent.parent
    out = Path(cfg.output_path) if cfg.output_path else run_dir / "model.pt"
    check_output(out, bool(cfg.overwrite), {"ckpt_path": ckpt})
    metrics_file = run_dir / "metrics.json"  # the run's test metrics travel with the model when present
    test = json.loads(metrics_file.read_text()).get("test") if metrics_file.exists() else None
    facts = RunFacts(test_metrics=test or {})
    written = export_checkpoint(ckpt, out, facts, overwrite=bool(cfg.overwrite), signing_key=signing_key)
    log.info("exported %s → %s", ckpt, written)


if __name__ == "__main__":
    main()
