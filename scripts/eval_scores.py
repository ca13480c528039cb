"""AUROC / AP of a scores file against protocol labels built by churnwatch's own contract and snapshot code.

python scripts/eval_scores.py --scores checkpoints/or_lstm/scores.parquet \
    --events ../shared/data/online_retail/online_retail.parquet --as-of 2011-09-01 --horizon-days 90
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from churnwatch.config.compose import compose
from churnwatch.data.loaders import load_events
from churnwatch.data.schema import CUSTOMER_ID, EventSchema
from churnwatch.data.snapshots import EventLog, build_snapshot, label_event_mask
from churnwatch.data.validation import DEFAULT_POLICY


def protocol_labels(data: str, events: str | None, as_of: str, horizon_days: int) -> pd.Series:
    """Churn label (0/1) per customer of the `as_of` snapshot, indexed by customer id."""
    cfg = compose("prepare", overrides=[f"data={data}"])
    dcfg = OmegaConf.to_container(cfg.data, resolve=True)
    loaded = load_events(
        events or dcfg["events_path"],
        EventSchema.from_config(dcfg),
        policy=dcfg.get("policy", DEFAULT_POLICY),
        end_date=dcfg.get("end_date"),
        row_filter=dcfg.get("filter"),
        derived=dcfg.get("derived"),
    )
    log = EventLog.from_frame(loaded.frame)
    snaps = build_snapshot(
        log,
        pd.Timestamp(as_of).normalize(),
        horizon_days,
        lookback_days=dcfg.get("lookback_days"),
        label_events=label_event_mask(log.frame, dcfg.get("label_events")),
        data_end=loaded.data_end,
    )
    return pd.Series(snaps.label.astype(np.int64), index=snaps.customer_ids(log).astype(str), name="label")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", required=True, help="scores file written by scripts/score.py")
    parser.add_argument("--events", default=None, help="events file (default: the data config's)")
    parser.add_argument("--data", default="online_retail", help="data config group option")
    parser.add_argument("--as-of", default="2011-09-01")
    parser.add_argument("--horizon-days", type=int, default=90)
    parser.add_argument("--expect-customers", type=int, default=3317, help="0: do not check the count")
    args = parser.parse_args()

    labels = protocol_labels(args.data, args.events, args.as_of, args.horizon_days)
    path = Path(args.scores)
    if path.suffix == ".parquet":
        scores = pd.read_parquet(path)
    else:
        scores = pd.read_csv(path, dtype={CUSTOMER_ID: str})
    scored = scores.loc[~scores["lapsed"].astype(bool) & ~scores["no_history"].astype(bool)]
    scored = scored.set_index(scored[CUSTOMER_ID].astype(str))["churn_probability"]
    assert set(scored.index) == set(labels.index), (
        f"scored population ({len(scored)}) differs from the snapshot population ({len(labels)})"
    )
    assert not args.expect_customers or len(labels) == args.expect_customers, (
        f"{len(labels)} customers in the {args.as_of} snapshot, expected {args.expect_customers}"
    )
    y = torch.tensor(labels.to_numpy())
    p = torch.tensor(scored.reindex(labels.index).to_numpy(dtype=np.float64))
    print(f"scores: {path}  as_of {args.as_of}  horizon {args.horizon_days}d")
    print(f"customers {len(labels):,}  churn rate {y.double().mean():.4f}")
    print(f"AUROC {float(binary_auroc(p, y)):.6f}  AP {float(binary_average_precision(p, y)):.6f}")


if __name__ == "__main__":
    main()
