"""Reading input tables (parquet, CSV/TSV, Arrow batches) as churnwatch reads every file: text as-is, a
repeated or reserved column name refused, and any read failure one line naming the file."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from churnwatch.errors import DataValidationError

RESERVED_PREFIX = "__churnwatch"
"""Columns churnwatch adds while reading (e.g. each row's number in the file): an input may not have them."""


def missing_file(path: Path) -> str:
    """Why an input path that does not exist does not: a symlink loop or a dangling link says so."""
    if not path.is_symlink():
        return "file not found"
    try:
        path.resolve(strict=True)
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError for a loop, later ones OSError
        if isinstance(exc, RuntimeError) or exc.errno == errno.ELOOP:
            return "symlink loop (the link points back to itself)"
        return f"dangling symlink to {os.readlink(path)!r}"
    return "file not found"


def _suffixes(path: Path) -> str:
    return "".join(path.suffixes).lower()


def _is_parquet(path: Path) -> bool:
    return _suffixes(path).endswith((".parquet", ".pq"))


def _csv_options(path: Path, columns: Sequence[str] | None) -> dict[str, Any]:
    """Every CSV is read the same way: text as-is (ids keep leading zeros), BOM stripped, "" is null."""
    return {
        "sep": "\t" if ".tsv" in _suffixes(path) else ",",
        "dtype": str,
        "keep_default_na": False,
        "na_values": [""],
        "encoding": "utf-8-sig",
        # no usecols for all columns: with one, pandas silently cuts a row with too many fields
        "usecols": None if columns is None else (lambda c: c in columns),
        # never take surplus leading fields for an index: a row longer than the header is an error
        "index_col": False,
    }


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Any read failure of `path` as one line naming it."""
    if not path.exists():
        raise DataValidationError(f"{path}: {missing_file(path)}")
    suffixes = _suffixes(path)
    if not (_is_parquet(path) or suffixes.endswith((".csv", ".csv.gz", ".tsv", ".txt"))):
        raise DataValidationError(
            f"{path}: unsupported file type {suffixes or '(none)'}; use .parquet or .csv"
        )
    try:
        with warnings.catch_warnings():
            # pandas only warns (and drops the surplus) when a first row is longer than the header
            warnings.simplefilter("error", pd.errors.ParserWarning)
            yield
    except pd.errors.ParserWarning as exc:
        raise DataValidationError(
            f"{path}: cannot read file (a row has more fields than the header)"
        ) from exc
    except (pa.ArrowException, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataValidationError(f"{path}: cannot read file ({first})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: file is empty (no header, no rows)") from exc


def _header(path: Path) -> list[str]:
    """The column names as the file states them (pandas renames a repeated CSV name to 'name.1')."""
    if _is_parquet(path):
        return list(pq.read_schema(path).names)
    options = {k: v for k, v in _csv_options(path, None).items() if k != "usecols"}
    first = pd.read_csv(path, header=None, nrows=1, **options)
    return ["" if pd.isna(v) else str(v) for v in first.iloc[0]] if len(first) else []


def check_columns(names: Sequence[Any], path: str | Path) -> None:
    """A name twice (which copy would be read?) or one of churnwatch's own columns is a one-line error."""
    seen: dict[str, int] = {}
    for i, name in enumerate(map(str, names)):
        if name in seen:
            raise DataValidationError(
                f"{path}: column {name!r} appears twice in the header (columns {seen[name] + 1} and "
                f"{i + 1}); rename or drop one"
            )
        seen[name] = i
        if name.startswith(RESERVED_PREFIX):
            raise DataValidationError(
                f"{path}: column {name!r}: names starting with {RESERVED_PREFIX!r} are churnwatch's own; "
                "rename it"
            )


def _discover(path: str | Path) -> pads.Dataset:
    """Arrow's discovery of a parquet file or directory (hive partitions; names starting with '.' or '_'
    skipped, as Arrow skips them), or one line saying why not."""
    try:
        return pads.dataset(str(path), format="parquet", partitioning="hive")
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(path, exc) from None


def _not_parquet(path: str | Path, exc: Exception) -> DataValidationError:
    first = str(exc).strip().splitlines()[0]
    return DataValidationError(f"{path}: not a parquet file or a directory of parquet files ({first})")


def parquet_dataset(path: str | Path) -> pads.Dataset:
    """A parquet file, or a directory of them, as an Arrow dataset: its files in path order (the order their
    rows are read and numbered in, here and on a cluster, jobs/ray_data.py), its schema every file's
    columns (a column some file lacks is null there), then the partition keys. An unreadable one is one
    line."""
    found = _discover(path)
    try:
        fragments = sorted(found.get_fragments(), key=lambda f: f.path)
        schema = pa.unify_schemas([found.schema, *(f.physical_schema for f in fragments)])
        return pads.dataset(
            [f.path for f in fragments],
            schema=schema,
            format="parquet",
            partitioning="hive",
            partition_base_dir=str(path),
            filesystem=found.filesystem,
        )
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(path, exc) from None


def dataset_files(path: str | Path) -> list[str]:
    """The data files of a parquet dataset directory, in path order (found by name: no footer is read,
    since the cache key lists them several times)."""
    return sorted(_discover(path).files)


def _read_dataset(path: Path, columns: Sequence[str] | None) -> pd.DataFrame:
    """A directory of parquet files as one table (`parquet_dataset`)."""
    dataset = parquet_dataset(path)
    if not dataset.files:
        raise DataValidationError(f"{path}: directory holds no parquet files")
    check_columns(dataset.schema.names, path)
    wanted = [c for c in columns if c in dataset.schema.names] if columns is not None else None
    try:
        table = dataset.to_table(columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise DataValidationError(f"{path}: cannot read the parquet dataset ({first})") from None
    return table.to_pandas(self_destruct=True, split_blocks=True)


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read parquet or CSV by extension, or a directory of parquet files (a dataset, hive partitions
    allowed); a missing or unreadable file, or a header naming a column twice, is a one-line error."""
    path = Path(path)
    if path.is_dir():
        return _read_dataset(path, columns)
    with _reading(path):
        header = _header(path)
        check_columns(header, path)
        if _is_parquet(path):
            wanted = [c for c in columns if c in header] if columns is not None else None
            # self_destruct frees Arrow buffers as columns convert, so the peak is ~one copy, not two
            return pq.read_table(path, columns=wanted).to_pandas(self_destruct=True, split_blocks=True)
        return pd.read_csv(path, **_csv_options(path, columns))


def count_rows(path: str | Path) -> int | None:
    """Rows of a parquet file from its footer (None for CSV: counting would mean reading it)."""
    path = Path(path)
    with _reading(path):
        return pq.ParquetFile(path).metadata.num_rows if _is_parquet(path) else None


def iter_batches(path: str | Path, batch_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """The file in consecutive row batches, in bounded memory, as Arrow tables with one schema for all
    batches: parquet as stored (dictionary columns stay dictionaries, with int32 indices, each batch its
    own dictionary: cheap to move and to factorize), CSV as text like `read_table` reads it."""
    path = Path(path)
    with _reading(path):
        check_columns(_header(path), path)
        if _is_parquet(path):
            # row group by row group: the reader's own iter_batches reads ahead, and its memory grew
            # with the file (1.8 GB for 145M rows against 0.3 GB this way)
            source = pq.ParquetFile(path)
            schema = _int32_dictionaries(source.schema_arrow)
            for g in range(source.metadata.num_row_groups):
                if source.metadata.row_group(g).num_rows <= 2 * batch_rows:
                    batches = source.read_row_group(g).to_batches()
                else:  # a huge row group: stream it in batches
                    batches = source.iter_batches(batch_size=batch_rows, row_groups=[g])
                for batch in batches:
                    yield pa.Table.from_batches([batch]).combine_chunks().cast(schema)
            return
        with pd.read_csv(path, chunksize=batch_rows, **_csv_options(path, None)) as chunks:
            for chunk in chunks:
                schema = pa.schema([(str(c), pa.string()) for c in chunk.columns])
                yield pa.Table.from_pandas(chunk, schema=schema, preserve_index=False)


def _int32_dictionaries(schema: pa.Schema) -> pa.Schema:
    return pa.schema(
        [
            f.with_type(pa.dictionary(pa.int32(), f.type.value_type)) if pa.types.is_dictionary(f.type) else f
            for f in schema
        ]
    )
