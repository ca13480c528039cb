"""Sharded scoring: which customers a shard holds, how a shard part says which shard it is, and the merge
of all parts into the output one unsharded run would write.

A customer's shard is a stable hash of its id, the same on every machine, so N independent jobs each score
one shard of the same input (`num_shards`, `shard_index`) and `merge_shards` ranks their union.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from churnwatch.artifact.model_file import load_model
from churnwatch.config.options import check_values
from churnwatch.config.schema import ScoreConfig
from churnwatch.data.partition import by_category
from churnwatch.errors import ConfigError, DataValidationError
from churnwatch.io.atomic import check_output
from churnwatch.io.signing import Verification
from churnwatch.scoring.output import check_suffix, report_path
from churnwatch.scoring.ranking import Ranker

log = logging.getLogger(__name__)
SHARD_METADATA = "churnwatch.shard"
"""A shard part's footer key: its num_shards, shard_index and as_of (a shard without customers is a part
without rows, so the rows cannot carry them)."""


def shard_of(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """A customer's shard: a stable hash of its id (BLAKE2b, the same on every machine and version)."""
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode(), digest_size=8).digest(), "little") % num_shards
            for i in ids
        ),
        dtype=np.int64,
        count=len(ids),
    )


def check_shard(shard: tuple[int, int]) -> None:
    """num_shards ≥ 1 and 0 ≤ shard_index < num_shards, by the options' rules."""
    check_values({"num_shards": shard[0], "shard_index": shard[1]})


def shard_filter(shard: tuple[int, int]) -> Callable[[pd.Series], np.ndarray]:
    """Rows of a shard, from canonical ids (one hash per distinct id); null ids go to shard 0, so their
    rows are reported once."""
    num_shards, index = shard

    def keep(ids: pd.Series) -> np.ndarray:
        return by_category(ids, lambda categories: shard_of(categories, num_shards) == index, index == 0)

    return keep


def shard_footer(shard: tuple[int, int], as_of: pd.Timestamp) -> dict[str, str]:
    num_shards, index = shard
    return {SHARD_METADATA: json.dumps({"num_shards": num_shards, "shard_index": index, "as_of": str(as_of)})}


def shard_identity(path: str | Path) -> dict[str, Any]:
    """num_shards, shard_index and as_of of a shard part, from its footer (`shard_footer`)."""
    found = (pq.read_schema(path).metadata or {}).get(SHARD_METADATA.encode())
    if found is None:
        raise ConfigError(f"{path}: not a shard part (score with num_shards=N shard_index=i)")
    return json.loads(found)


def merge_shards(
    model_path: str | Path,
    part_paths: list[str | Path],
    output_path: str | Path,
    *,
    playbook: Mapping[str, Any] | None = None,
    rank_by: str = ScoreConfig.rank_by,
    overwrite: bool = False,
    block_rows: int = ScoreConfig.block_rows,
    verify: Verification | None = None,
) -> int:
    """The union of shard parts, ranked and tiered as one run over the whole population (row for row the
    output of an unsharded run), in bounded memory. Refuses missing or repeated shards and customers in
    two parts. Returns the number of customers written."""
    if not part_paths:
        raise ConfigError("merge: no shard parts given")
    check_values({"block_rows": block_rows})
    parts = {f"parts[{i}]": p for i, p in enumerate(part_paths)}
    check_suffix(check_output(output_path, overwrite, {"model_path": model_path, **parts}))
    info = pd.DataFrame([shard_identity(p) for p in part_paths])
    shards = sorted(info["shard_index"].unique())
    expected = int(info["num_shards"].iloc[0])
    if info["num_shards"].nunique() != 1 or shards != list(range(expected)):
        raise ConfigError(f"merge: parts cover shards {shards} of num_shards={expected}")
    if len(part_paths) != expected:
        raise ConfigError(f"merge: {len(part_paths)} parts for {expected} shards")
    if info["as_of"].nunique() != 1:
        raise ConfigError(
            f"merge: parts were scored at different as_of dates {sorted(info['as_of'].unique())}"
        )
    check_some_kept(part_paths)
    # the model file is checked (and with `verify` its signature) as scoring checks it; ranking needs only
    # its metadata
    artifact = load_model(model_path, "cpu", verify)
    ranker = Ranker.from_meta(artifact.meta, artifact.path, playbook=playbook, rank_by=rank_by)
    drop = ("num_shards", "shard_index")
    return ranker.write_ranked(part_paths, output_path, overwrite=overwrite, drop=drop, block_rows=block_rows)


def check_some_kept(part_paths: list[str | Path]) -> None:
    """Shards whose validation, all together, kept no event row: the unsharded run fails there, and so does
    the merge (read from the parts' sidecars; parts moved without them are not checked)."""
    sidecars = [report_path(p) for p in part_paths]
    if not all(s.exists() for s in sidecars):
        log.warning("merge: not every part has its sidecar (<part>.report.json): validation not checked")
        return
    events = [json.loads(s.read_text())["validation"]["events"] or {} for s in sidecars]
    if not any(e.get("rows_kept") for e in events):
        raise DataValidationError(
            f"merge: no shard kept a valid event row ({events[0].get('path')}); see {sidecars[0]} and the "
            "other parts' sidecars for what was dropped and why"
        )
