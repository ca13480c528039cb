"""`churnwatch ensemble members=[RUN_DIR,RUN_DIR,...] [calibrate=true] [export=true]`"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from churnwatch.cli.app import command


@command("ensemble")
def main(cfg: DictConfig) -> float | None:
    """Ensemble finished runs: calibrated members, weights fitted on validation, judged on test."""
    from churnwatch.io.signing import load_signing_key
    from churnwatch.runs.ensemble import train_ensemble
    from churnwatch.runs.record import print_metrics

    out_dir = Path(cfg.paths.output_dir)
    metrics = train_ensemble(
        list(cfg.members),
        out_dir,
        thresholds=OmegaConf.to_container(cfg.thresholds, resolve=True),
        calibrate=bool(cfg.calibrate),
        export=bool(cfg.export),
        report=bool(cfg.get("report", True)),
        signing_key=load_signing_key(cfg.signing_key if cfg.export else None),
    )
    print_metrics(metrics, out_dir)
    console = Console()
    console.print("weights: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics["weights"].items()))
    if "export_skipped" in metrics:
        console.print(f"not exported: {metrics['export_skipped']}")
    return metrics["val"].get("val/auroc")


if __name__ == "__main__":
    main()
