"""Write a run's HTML report: python scripts/report.py run_dir=checkpoints/demo"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig
from rich.console import Console

from churnwatch.report import write_report


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    Console().print(f"report → {write_report(cfg.run_dir)}")


if __name__ == "__main__":
    main()
