"""What a scoring run reads: events and customer attributes validated under the training contract, then
one snapshot per customer at the scoring date.

Inputs come as files, DataFrames or Arrow tables, whole (in memory) or split into customer-disjoint parts
on disk (`InputReader.split_input`), so a file of any size is read in bounded memory. Validation is the
contract's own (`load_events`, `load_customers`): scoring drops and reports exactly what training would.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from churnwatch.data.loaders import LoadedEvents, load_customers, load_events
from churnwatch.data.parsing import normalise_ids, parse_day
from churnwatch.data.partition import among, read_part, split_file
from churnwatch.data.readers import count_rows, file_size, read_table
from churnwatch.data.schema import CUSTOMER_ID, TIMESTAMP, CustomerSchema, EventSchema
from churnwatch.data.snapshots import EventLog, Snapshots, build_snapshot
from churnwatch.data.validation import DEFAULT_POLICY, JoinReport, ValidationReport, no_event_rows
from churnwatch.scoring.shards import check_shard, shard_filter, shard_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoringInput:
    """What a scoring run reads: the validated event log, one snapshot per customer, attributes, ids."""

    log: EventLog
    snaps: Snapshots
    customers: pd.DataFrame | None
    as_of: pd.Timestamp
    input_ids: np.ndarray
    join: JoinReport | None = None
    """How the customers file joined these customers (None without one)."""


Table = str | Path | pd.DataFrame | pa.Table
"""An input table: a parquet or CSV file, or the rows in memory."""


def table_source(table: Table | None, name: str) -> tuple[str | Path | None, pd.DataFrame | None]:
    """A file as (its path, None); rows in memory as (a label for messages, a DataFrame whose index is the
    row number, what validation errors cite)."""
    if isinstance(table, pa.Table):
        return f"<{name}: Arrow table>", table.to_pandas()
    if isinstance(table, pd.DataFrame):
        return f"<{name}: DataFrame>", table.reset_index(drop=True)
    return table, None


def default_as_of(as_of: str | pd.Timestamp | None, data_end: pd.Timestamp) -> pd.Timestamp:
    """`as_of` as a day (a one-line error when it is not one), or the day after the data's last valid
    event."""
    return parse_day(as_of, "as_of") if as_of is not None else data_end.normalize() + pd.Timedelta(days=1)


class InputReader:
    """Reads and validates scoring inputs under the contract a model was trained on (its `data` config,
    event schema and customer schema)."""

    def __init__(self, data_cfg: Mapping[str, Any], schema: EventSchema, customer_schema: CustomerSchema):
        self.data_cfg = data_cfg
        self.schema = schema
        self.customer_schema = customer_schema
        self.customer_columns: pd.DataFrame | None = None
        """An empty customers part, for parts none of whose customers has attributes (`split_input`)."""

    @property
    def uses_customers(self) -> bool:
        return bool(self.customer_schema.columns)

    def read_events(
        self, path: str | Path, frame: pd.DataFrame | None = None, part: bool = True
    ) -> LoadedEvents:
        """Validate events under the training contract: the whole file, or `frame`, one part of it (or
        with `part=False`, a whole table handed over in memory)."""
        data = self.data_cfg
        return load_events(
            path,
            self.schema,
            policy=data.get("policy", DEFAULT_POLICY),
            end_date=None,
            row_filter=data.get("filter"),
            derived=data.get("derived"),
            frame=frame,
            part=part and frame is not None,
        )

    def read_customers(
        self, path: str | Path | None, frame: pd.DataFrame | None = None
    ) -> tuple[pd.DataFrame | None, ValidationReport | None]:
        """The attributes the model uses (the whole file, or one part of it), or None without them."""
        if not self.uses_customers or path is None:
            return None, None
        return load_customers(
            path,
            self.customer_schema,
            id_column=self.schema.customer_id,
            timezone=self.schema.timezone,
            policy=self.data_cfg.get("policy", DEFAULT_POLICY),
            frame=frame,
        )

    def prepare(
        self, loaded: LoadedEvents, customers: pd.DataFrame | None, as_of: pd.Timestamp
    ) -> ScoringInput:
        """Validated events → one snapshot per customer at `as_of`. An `as_of` before every event leaves
        everyone without history: said in the log, not only by the 'unknown' tiers."""
        event_log = EventLog.from_frame(loaded.frame)
        snaps = build_snapshot(event_log, as_of, horizon_days=None)
        first = loaded.frame[TIMESTAMP].min() if len(loaded.frame) else pd.NaT
        if not pd.isna(first) and as_of <= first:
            log.warning(
                "as_of %s is before every event (the first is %s): %s customers are scored without history",
                as_of.date(),
                first,
                f"{len(loaded.input_ids):,}",
            )
        join = JoinReport.of(loaded.input_ids, customers.index) if customers is not None else None
        return ScoringInput(event_log, snaps, customers, as_of, np.asarray(loaded.input_ids), join)

    def warn_without_customers(self, customers: Table | None) -> None:
        if self.uses_customers and customers is None:
            log.warning(
                "the model uses customer attributes but no customers_path was given: they are scored as "
                "unknown"
            )

    def load(
        self,
        events: Table,
        customers: Table | None = None,
        as_of: str | pd.Timestamp | None = None,
        shard: tuple[int, int] | None = None,
    ) -> ScoringInput:
        """Raw events (a file, a DataFrame or an Arrow table) → the training contract → one snapshot per
        customer at `as_of`, all in memory (monitoring reads its input this way; `score_file` streams
        files in parts); `shard=(num_shards, index)` keeps that shard's customers."""
        events_path, events_frame = table_source(events, "events")
        loaded = self.read_events(events_path, events_frame, part=False)
        self.warn_without_customers(customers)
        customers_path, customers_frame = table_source(customers, "customers")
        customers, _ = self.read_customers(customers_path, customers_frame)
        frame, input_ids = loaded.frame, loaded.input_ids
        if shard is not None:
            check_shard(shard)
            input_ids = np.asarray(input_ids)[shard_of(input_ids, shard[0]) == shard[1]]
            frame = frame[frame[CUSTOMER_ID].astype(str).isin(set(map(str, input_ids)))]
            if isinstance(frame[CUSTOMER_ID].dtype, pd.CategoricalDtype):
                frame = frame.assign(**{CUSTOMER_ID: frame[CUSTOMER_ID].cat.remove_unused_categories()})
        as_of_ts = default_as_of(as_of, loaded.data_end)
        inp = self.prepare(replace(loaded, frame=frame, input_ids=input_ids), customers, as_of_ts)
        if inp.join is not None:
            inp.join.check(customers_path)
        return inp

    def split_input(
        self,
        events_path: str | Path,
        customers_path: str | Path | None,
        shard: tuple[int, int] | None,
        part_events: int,
        spill: Path,
    ) -> list[tuple[Path | None, Path | None]]:
        """(events part, customers part) pairs of customer-disjoint parts on disk, about `part_events`
        rows each; [(None, None)] when the input fits in one part and is read whole."""
        rows = count_rows(events_path)
        if rows is None:  # CSV: estimate from the size (about 64 bytes per row)
            rows = file_size(events_path) // 64
        n_parts = max(1, -(-int(rows) // max(1, int(part_events))))
        if n_parts == 1 and shard is None:
            return [(None, None)]
        keep = shard_filter(shard) if shard is not None else None
        events = split_file(events_path, self.schema.customer_id, n_parts, spill / "events", keep)
        if not events:
            raise no_event_rows(events_path)
        customers: dict[str, Path] = {}
        if self.uses_customers and customers_path is not None:
            found = split_file(customers_path, self.schema.customer_id, n_parts, spill / "customers", keep)
            customers = {p.name: p for p in found}
            self.customer_columns = read_part(found[0]).iloc[:0] if found else None
        return [(p, customers.get(p.name)) for p in events]

    def read_part(
        self,
        events_path: str | Path,
        customers_path: str | Path | None,
        events_part: Path | None,
        customers_part: Path | None,
        keep: np.ndarray | None = None,
    ) -> tuple[LoadedEvents, pd.DataFrame | None, ValidationReport | None]:
        """One part validated (events and the same customers' attributes); `None` parts: the whole files.
        With `keep` (canonical ids), only those customers' rows are validated: `drivers.tiers`' second pass
        reads a few customers of every part."""
        events = read_table(events_path) if events_part is None else read_part(events_part)
        events = self._kept(events, keep)
        loaded = self.read_events(events_path, events)
        if customers_path is None or not self.uses_customers:
            return loaded, None, None
        if events_part is None:
            customers = read_table(customers_path)
        elif customers_part is not None:
            customers = read_part(customers_part)
        elif self.customer_columns is not None:  # none of this part's customers has attributes
            customers = self.customer_columns
        else:  # the customers file has no rows at all
            customers = read_table(customers_path)
        frame, report = self.read_customers(customers_path, self._kept(customers, keep))
        return loaded, frame, report

    def _kept(self, frame: pd.DataFrame, keep: np.ndarray | None) -> pd.DataFrame:
        """The rows of customers `keep` (all rows without it; a missing id column is left to validation)."""
        name = self.schema.customer_id
        if keep is None or name not in frame.columns:
            return frame
        return frame[among(normalise_ids(frame[name]), keep)]
