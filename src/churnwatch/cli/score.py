"""`churnwatch score model_path=M events_path=E output_path=O [customers_path=C] [as_of=DATE] [...]`"""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from churnwatch.cli.app import command, require_packages
from churnwatch.errors import ConfigError

if TYPE_CHECKING:
    from churnwatch.jobs.score import ScoringResult


@command("score")
def main(cfg: DictConfig) -> None:
    """Score customers with an exported model.pt: probability, tier, rank, drivers and action per customer."""
    from churnwatch.jobs.score import ScoreJob, score_file

    job = ScoreJob.from_config(cfg)
    if cfg.engine == "ray":
        require_packages("churnwatch score", ("ray", "ray.data"), "distributed")
        from churnwatch.jobs.score_ray import score_on_ray

        result = score_on_ray(job, OmegaConf.to_object(cfg.ray))
    elif cfg.engine == "local":
        result = score_file(job)
    else:
        raise ConfigError(f"engine must be 'local' or 'ray', got {cfg.engine!r}")
    console = Console(width=max(Console().width, 100))
    if cfg.num_shards:
        console.print(
            f"shard {cfg.shard_index}/{cfg.num_shards}: scored {result.scored:,} customers in "
            f"{result.seconds:.1f}s → {result.output_path} (unranked; churnwatch merge-scores ranks parts)"
        )
        return
    console.print(
        f"scored {result.scored:,} customers ({result.no_history:,} without history before as_of) "
        f"in {result.seconds:.1f}s ({result.parts} part(s)) → {result.output_path}"
    )
    console.print(riskiest(result, int(cfg.show_top)))


def riskiest(result: ScoringResult, n: int) -> Table:
    """The first `n` rows of the ranked output as a table."""
    top = result.top.head(n)
    table = Table(
        title=f"riskiest {len(top)} customers (as of {top['as_of'].iloc[0].date() if len(top) else '-'})"
    )
    numbers = ("risk_rank", "churn_probability", "value_at_risk")
    columns = (
        "risk_rank",
        "customer_id",
        "churn_probability",
        "risk_tier",
        "value_at_risk",
        "driver_1",
        "action",
    )
    for col in columns:
        table.add_column(col, justify="right" if col in numbers else "left")
    for row in top.itertuples():
        table.add_row(
            str(row.risk_rank),
            str(row.customer_id),
            f"{row.churn_probability:.3f}",
            row.risk_tier,
            f"{row.value_at_risk:,.0f}",
            row.driver_1,
            row.action,
        )
    return table


if __name__ == "__main__":
    main()
