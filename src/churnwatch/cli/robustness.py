"""`churnwatch robustness model_paths=[M,...] events_path=E as_of=DATE [customers_path=C]`"""

from __future__ import annotations

from pathlib import Path

from hydra import compose
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from churnwatch.cli.app import command


@command("robustness")
def main(cfg: DictConfig) -> None:
    """Re-score a past date under perturbed inputs: how AUROC, high-tier precision and tiers hold up.

    Events lost, late, noisy, blanked, re-coded, duplicated or scored on another day (docs/MONITORING.md)."""
    from churnwatch.io.atomic import check_output
    from churnwatch.io.signing import Verification
    from churnwatch.jobs.monitor import LabelSource
    from churnwatch.jobs.robustness import check_metric, render, run_robustness, write_outputs
    from churnwatch.runs.report import ROBUSTNESS_FILE

    check_metric(cfg.plot_metric)
    verify = Verification.from_config(cfg.verify_key, bool(cfg.require_signature))
    inputs = {k: cfg[k] for k in ("events_path", "customers_path", "labels_path")}
    check_output(Path(cfg.output_dir) / ROBUSTNESS_FILE, True, inputs, key="output_dir")
    # the monitor's own thresholds (conf/monitor.yaml), composed in this Hydra run as curves composes train
    thresholds = compose("monitor").thresholds if cfg.monitor else None
    study = run_robustness(
        cfg.model_paths if isinstance(cfg.model_paths, str) else list(cfg.model_paths),
        cfg.events_path,
        cfg.as_of,
        customers_path=cfg.customers_path,
        perturbations=OmegaConf.to_container(cfg.perturbations, resolve=True),
        labels=LabelSource(cfg.labels_path, cfg.labels.customer_id, cfg.labels.label, cfg.labels.cutoff),
        monitor_thresholds=OmegaConf.to_container(thresholds, resolve=True) if thresholds else None,
        seed=int(cfg.seed),
        device=cfg.device,
        verify=verify,
    )
    console = Console(width=max(Console().width, 120))
    render(study, console)
    for path in write_outputs(study, cfg.output_dir, cfg.plot_metric):
        console.print(f"→ {path}")


if __name__ == "__main__":
    main()
