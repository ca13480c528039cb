"""Reading input tables (parquet, CSV/TSV, Arrow batches) as churnwatch reads every file: text as-is, a
repeated or reserved column name refused, and any read failure one line naming the file. A path may be a URL
(`s3://...`, any fsspec protocol, io/object_store.py): the file is read in place, and errors name the URL."""

from __future__ import annotations

import errno
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from churnwatch.errors import DataValidationError
from churnwatch.io.object_store import is_url, modified_ns, url_fs

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


@dataclass(frozen=True)
class InputFile:
    """An input path as Arrow and pandas read it: a local file, or a URL's path on its fsspec file system."""

    name: str | Path
    """The path as given: errors name it, and pandas opens it (a URL through fsspec itself)."""
    path: str | Path
    """Where it is on `fs` (the local path itself without one)."""
    fs: Any = None

    @classmethod
    def of(cls, path: str | Path) -> InputFile:
        if not is_url(path):
            return cls(Path(path), Path(path))
        fs, where = url_fs(str(path))
        return cls(path, where, fs)

    @property
    def arrow(self) -> dict[str, Any]:
        """Arrow's `filesystem=` for it (none for a local file)."""
        return {} if self.fs is None else {"filesystem": self.fs}

    def exists(self) -> bool:
        return Path(self.path).exists() if self.fs is None else self.fs.exists(self.path)

    def is_dir(self) -> bool:
        """Whether it is a directory (False for a store that cannot be reached: reading it says why)."""
        try:
            return Path(self.path).is_dir() if self.fs is None else self.fs.isdir(self.path)
        except OSError:
            return False

    def size_and_mtime(self, path: str | None = None) -> tuple[int, int]:
        """Its size and modification time in ns (0 where a store keeps none); or those of the file `path`
        on the same file system."""
        where = self.path if path is None else path
        if self.fs is None:
            st = os.stat(where)
            return st.st_size, st.st_mtime_ns
        info = self.fs.info(where)
        return int(info["size"]), modified_ns(info)

    def open(self, path: str | None = None) -> Any:
        """It (or the file `path` on the same file system) open for reading bytes."""
        where = self.path if path is None else path
        return open(where, "rb") if self.fs is None else self.fs.open(where, "rb")

    def missing(self) -> str:
        return missing_file(Path(self.path)) if self.fs is None else "file not found"


def _suffixes(path: str | Path) -> str:
    return "".join(PurePosixPath(str(path)).suffixes).lower()


def _is_parquet(path: str | Path) -> bool:
    return _suffixes(path).endswith((".parquet", ".pq"))


def _csv_options(path: str | Path, columns: Sequence[str] | None) -> dict[str, Any]:
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
def _reading(file: InputFile) -> Iterator[None]:
    """Any read failure of `file` as one line naming it."""
    path = file.name
    try:
        exists = file.exists()
    except OSError as exc:  # a store that cannot be reached, or refuses
        raise DataValidationError(f"{path}: cannot read file ({_first_line(exc)})") from None
    if not exists:
        raise DataValidationError(f"{path}: {file.missing()}")
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
        raise DataValidationError(f"{path}: cannot read file ({_first_line(exc)})") from exc
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(f"{path}: file is empty (no header, no rows)") from exc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _header(file: InputFile) -> list[str]:
    """The column names as the file states them (pandas renames a repeated CSV name to 'name.1')."""
    if _is_parquet(file.name):
        return list(pq.read_schema(file.path, **file.arrow).names)
    options = {k: v for k, v in _csv_options(file.name, None).items() if k != "usecols"}
    first = pd.read_csv(file.name, header=None, nrows=1, **options)
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


def _discover(file: InputFile) -> pads.Dataset:
    """Arrow's discovery of a parquet file or directory (hive partitions; names starting with '.' or '_'
    skipped, as Arrow skips them), or one line saying why not."""
    try:
        return pads.dataset(str(file.path), format="parquet", partitioning="hive", **file.arrow)
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(file.name, exc) from None


def _not_parquet(path: str | Path, exc: Exception) -> DataValidationError:
    return DataValidationError(
        f"{path}: not a parquet file or a directory of parquet files ({_first_line(exc)})"
    )


def parquet_dataset(path: str | Path) -> pads.Dataset:
    """A parquet file, or a directory of them, as an Arrow dataset: its files in path order (the order their
    rows are read and numbered in, here and on a cluster, jobs/ray_data.py), its schema every file's
    columns (a column some file lacks is null there), then the partition keys. An unreadable one is one
    line."""
    file = InputFile.of(path)
    found = _discover(file)
    try:
        fragments = sorted(found.get_fragments(), key=lambda f: f.path)
        schema = pa.unify_schemas([found.schema, *(f.physical_schema for f in fragments)])
        return pads.dataset(
            [f.path for f in fragments],
            schema=schema,
            format="parquet",
            partitioning="hive",
            partition_base_dir=str(file.path),
            filesystem=found.filesystem,
        )
    except (pa.ArrowException, OSError) as exc:
        raise _not_parquet(path, exc) from None


def dataset_files(path: str | Path | InputFile) -> list[str]:
    """The data files of a parquet dataset directory, in path order (found by name: no footer is read,
    since the cache key lists them several times); at a URL, their paths on its file system."""
    return sorted(_discover(path if isinstance(path, InputFile) else InputFile.of(path)).files)


def _read_dataset(path: str | Path, columns: Sequence[str] | None) -> pd.DataFrame:
    """A directory of parquet files as one table (`parquet_dataset`)."""
    dataset = parquet_dataset(path)
    if not dataset.files:
        raise DataValidationError(f"{path}: directory holds no parquet files")
    check_columns(dataset.schema.names, path)
    wanted = [c for c in columns if c in dataset.schema.names] if columns is not None else None
    try:
        table = dataset.to_table(columns=wanted)
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(f"{path}: cannot read the parquet dataset ({_first_line(exc)})") from None
    return table.to_pandas(self_destruct=True, split_blocks=True)


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read parquet or CSV by extension, or a directory of parquet files (a dataset, hive partitions
    allowed); a missing or unreadable file, or a header naming a column twice, is a one-line error."""
    file = InputFile.of(path)
    if file.is_dir():
        return _read_dataset(file.name, columns)
    with _reading(file):
        header = _header(file)
        check_columns(header, file.name)
        if _is_parquet(file.name):
            wanted = [c for c in columns if c in header] if columns is not None else None
            # self_destruct frees Arrow buffers as columns convert, so the peak is ~one copy, not two
            table = pq.read_table(file.path, columns=wanted, **file.arrow)
            return table.to_pandas(self_destruct=True, split_blocks=True)
        return pd.read_csv(file.name, **_csv_options(file.name, columns))


def count_rows(path: str | Path) -> int | None:
    """Rows of a parquet file from its footer (None for CSV: counting would mean reading it)."""
    file = InputFile.of(path)
    with _reading(file):
        return pq.ParquetFile(file.path, **file.arrow).metadata.num_rows if _is_parquet(file.name) else None


def file_size(path: str | Path) -> int:
    """The size of the file at `path` in bytes (a read failure: one line)."""
    file = InputFile.of(path)
    with _reading(file):
        return file.size_and_mtime()[0]


def iter_batches(path: str | Path, batch_rows: int = 1_000_000) -> Iterator[pa.Table]:
    """The file in consecutive row batches, in bounded memory, as Arrow tables with one schema for all
    batches: parquet as stored (dictionary columns stay dictionaries, with int32 indices, each batch its
    own dictionary: cheap to move and to factorize), CSV as text like `read_table` reads it."""
    file = InputFile.of(path)
    with _reading(file):
        check_columns(_header(file), file.name)
        if _is_parquet(file.name):
            # row group by row group: the reader's own iter_batches reads ahead, and its memory grew
            # with the file (1.8 GB for 145M rows against 0.3 GB this way)
            source = pq.ParquetFile(file.path, **file.arrow)
            schema = _int32_dictionaries(source.schema_arrow)
            for g in range(source.metadata.num_row_groups):
                if source.metadata.row_group(g).num_rows <= 2 * batch_rows:
                    batches = source.read_row_group(g).to_batches()
                else:  # a huge row group: stream it in batches
                    batches = source.iter_batches(batch_size=batch_rows, row_groups=[g])
                for batch in batches:
                    yield pa.Table.from_batches([batch]).combine_chunks().cast(schema)
            return
        with pd.read_csv(file.name, chunksize=batch_rows, **_csv_options(file.name, None)) as chunks:
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
