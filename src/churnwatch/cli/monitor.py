"""`churnwatch monitor model_path=M events_path=E [customers_path=C] [as_of=DATE] [labels_path=L]`"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from churnwatch.cli.app import command


@command("monitor")
def main(cfg: DictConfig) -> None:
    """Compare today's data with the model's training reference: monitor.json and a verdict (ok / warn /
    retrain). Exit code 0 whatever the verdict; 2 for an input that cannot be read or used."""
    from churnwatch.io.atomic import check_output
    from churnwatch.io.signing import Verification
    from churnwatch.jobs.monitor import MONITOR_FILE, LabelSource, render, run_monitor, write_report

    verify = Verification.from_config(cfg.verify_key, bool(cfg.require_signature))
    inputs = {k: cfg[k] for k in ("model_path", "events_path", "customers_path", "labels_path")}
    check_output(Path(cfg.output_dir) / MONITOR_FILE, True, inputs, key="output_dir")
    report = run_monitor(
        cfg.model_path,
        cfg.events_path,
        OmegaConf.to_container(cfg.thresholds, resolve=True),
        customers_path=cfg.customers_path,
        as_of=cfg.as_of,
        features=list(cfg.features) if cfg.features else None,
        labels=LabelSource(cfg.labels_path, cfg.labels.customer_id, cfg.labels.label, cfg.labels.cutoff),
        device=cfg.device,
        verify=verify,
    )
    console = Console(width=max(Console().width, 120))
    render(report, console)
    console.print(f"report: {write_report(report, cfg.output_dir)}")


if __name__ == "__main__":
    main()
