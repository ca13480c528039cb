"""Raw values to canonical ones: ids and categories as normalised text, timestamps as wall-clock time in
the configured zone, numbers as float64. Invalid values come back marked (NaT, NaN, a mask), never
dropped here: validation decides what happens to them."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnwatch.data.schema import ESCAPE, INTERNAL_TOKENS, MISSING
from churnwatch.errors import ConfigError, DataValidationError

_OFFSET_RE = r"(?:[zZ]|\d:\d{2}(?::\d{2}(?:\.\d+)?)?\s*[+-]\d{2}(?::?\d{2})?|\s(?:UTC|GMT|utc|gmt))$"
"""A time with a zone: Z, an offset after the time (+02:00, +0200, +02) or the names UTC/GMT."""
_NUMERIC_DATE = r"^(\d{1,2})[/.\-](\d{1,2})[/.\-]\d{2,4}(?:\D|$)"
"""A date written d/m/y or m/d/y (any of / . -): which one a column uses is decided once per column."""
INTEGRAL_TEXT = r"^(-?\d+)\.0+$"
"""An integer written as a float ("17850.0", what a spreadsheet or a float column exported as text gives):
the same id as 17850."""


def _label(value: Any) -> str | None:
    """One category's canonical text: 17850.0 and "17850.0" → "17850", " a " → "a", "" or null → None."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)) or value is pd.NA:
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    text = re.sub(INTEGRAL_TEXT, r"\1", str(value).strip().strip("\x00").strip())
    return text or None


SMALL_TABLE = 1024
"""Up to this many distinct values, labels are made one by one in Python: pandas' vectorised string
methods cost more per call than a request's whole category table."""
SMALL_COLUMN = 4096
"""Up to this many rows, a text column is read value by value in Python (a request's events): pyarrow's
and pandas' fixed cost per call dominates there, a loop in Python over more rows does not pay."""
_PLAIN_ISO = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?)?"
)
"""A time in plain ISO 8601 without a zone, at most microseconds: numpy and pandas read it alike."""


def _labels(categories: pd.Index) -> np.ndarray:
    """`_label` for every category, vectorised for the common string and float cases (1M ids)."""
    arrow_text = pd.api.types.is_string_dtype(categories.dtype) and not pd.api.types.is_object_dtype(
        categories.dtype
    )
    # Python's strip and `\d` agree with Arrow's on ASCII text (not on all of Unicode)
    if arrow_text and len(categories) <= SMALL_TABLE and all(c.isascii() for c in categories):
        return np.array([_label(c) for c in categories], dtype=object)
    if arrow_text:
        text = categories.astype(str).str.strip().str.strip("\x00").str.strip()
        text = text.str.replace(INTEGRAL_TEXT, r"\1", regex=True)
        return np.where(text == "", None, np.asarray(text, dtype=object))
    if pd.api.types.is_float_dtype(categories.dtype):
        values = categories.to_numpy(dtype=np.float64)
        integral = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**62)
        if integral.all():
            return values.astype(np.int64).astype(str).astype(object)
    return np.array([_label(c) for c in categories], dtype=object)


def escape_text(labels: np.ndarray) -> np.ndarray:
    """Category text as data: a value equal to an internal token, or starting with the escape character,
    gets one more escape character in front, so no input value can become `<pad>`, `<oov>`, `<other>` or
    the null category (and two different values never become one)."""
    hit = np.fromiter(
        (lab is not None and (lab in INTERNAL_TOKENS or lab.startswith(ESCAPE)) for lab in labels),
        dtype=bool,
        count=len(labels),
    )
    if hit.any():
        labels = labels.copy()
        labels[hit] = [ESCAPE + lab for lab in labels[hit]]
    return labels


def _recode(values: pd.Series, missing: str | None) -> pd.Series:
    """Canonical categorical: labels normalised per *category* (cheap), categories sorted.

    Null/empty values become `missing` when given, else stay null. Works on the category table, never
    per row in Python, so 10M-row columns cost one factorize.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # as text in UTC: no zone rules beyond year 9999
        values = aware_to_zone(values, "UTC")
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories, value_codes = values.cat.categories, values.cat.codes.to_numpy()
    else:  # the distinct values in any order (they are sorted below), no Categorical built
        value_codes, categories = _factorize(values)
    labels = _labels(categories)
    if missing is not None:  # category text, not ids: internal tokens are out of its reach
        labels = escape_text(labels)
    valid = np.array([lab is not None for lab in labels], dtype=bool)
    uniq, found = _sorted_distinct(labels[valid])
    position = np.full(len(labels) + 1, -1, dtype=np.int64)  # the last slot serves code -1 (null)
    position[:-1][valid] = found
    codes = position[np.asarray(value_codes)]
    if missing is not None and (codes < 0).any():
        uniq = np.append(uniq, missing)
        codes = np.where(codes < 0, len(uniq) - 1, codes)
    names = uniq.astype(str)
    dtype = _small_dtype(tuple(names.tolist())) if len(names) <= SMALL_TABLE else _dtype(names)
    # codes are valid by construction: every one indexes `uniq` or is -1
    return pd.Series(pd.Categorical.from_codes(codes, dtype=dtype, validate=False), index=values.index)


def _sorted_distinct(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct labels sorted (as Python sorts text: by code point), and each label's place among
    them. Arrow's sort and hash lookup for many labels (a part's customer ids: Python's sort and an object
    searchsorted were 0.1 s of each scoring part); UTF-8's byte order is the code point order."""
    if len(labels) > SMALL_COLUMN:
        try:
            text = pa.array(labels, type=pa.string())
        except (pa.ArrowException, UnicodeEncodeError):  # text Arrow cannot hold (a lone surrogate)
            text = None
        if text is not None:
            distinct = pc.unique(text)
            distinct = distinct.take(pc.array_sort_indices(distinct))
            found = pc.index_in(text, value_set=distinct).to_numpy(zero_copy_only=False)
            return np.asarray(distinct.to_numpy(zero_copy_only=False), dtype=object), found.astype(np.int64)
    uniq = np.array(sorted(set(labels)), dtype=object)
    return uniq, np.searchsorted(uniq, labels.astype(str)) if len(labels) else np.zeros(0, dtype=np.int64)


def _dtype(names: np.ndarray) -> pd.CategoricalDtype:
    """The categorical dtype of sorted, distinct category text."""
    return pd.CategoricalDtype(pd.Index(names, dtype=object) if len(names) else pd.Index([], dtype=object))


@functools.lru_cache(maxsize=256)
def _small_dtype(names: tuple[str, ...]) -> pd.CategoricalDtype:
    """`_dtype` of a short table, kept: requests bring the same few categories again and again, and
    checking a dtype's categories costs more than recoding a request's column."""
    return _dtype(np.array(names, dtype=str))


def _factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """`pd.factorize`; a short Arrow-backed text column through numpy, as object text whose labels
    `_labels` makes one by one, when it is all ASCII (where that agrees with Arrow's string methods)."""
    if len(values) <= SMALL_COLUMN and pd.api.types.is_string_dtype(values.dtype):
        codes, distinct = pd.factorize(values.to_numpy(dtype=object))
        if all(isinstance(c, str) and c.isascii() for c in distinct):
            return codes, pd.Index(distinct, dtype=object)
    return pd.factorize(values)


def canonical_ids(values: Sequence[Any]) -> frozenset[str]:
    """The distinct ids among `values` as `normalise_ids` writes them, nulls left out: a request's few ids
    for the price of a set, not of a Series (text that is not ASCII goes the Series way, where Arrow's
    string methods decide)."""
    try:
        distinct = {(type(v), v) for v in values}  # by type too: True and 1 are different ids
    except TypeError:  # an unhashable value (a list): the general path
        distinct = None
    if distinct is None or any(isinstance(v, str) and not v.isascii() for _, v in distinct):
        return frozenset(normalise_ids(pd.Series(list(values))).dropna().astype(str))
    return frozenset(label for label in (_label(v) for _, v in distinct) if label is not None)


def normalise_ids(values: pd.Series) -> pd.Series:
    """Ids as strings, so 17850, 17850.0 and "17850" are the same customer in every table.

    Returns a categorical series with sorted categories (so results never depend on row order);
    null/empty ids stay null for the caller to report.
    """
    return _recode(values, missing=None)


def parse_day(value: Any, what: str) -> pd.Timestamp:
    """A date option (e.g. as_of) as a day, or a one-line ConfigError: not a date, or outside the
    times pandas represents (1677-09-22 to 2262-04-11)."""
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{what}={value!r}: not a date ({first}); write it as YYYY-MM-DD") from exc
    if pd.isna(stamp):
        raise ConfigError(f"{what}={value!r}: not a date; write it as YYYY-MM-DD")
    if stamp.tzinfo is not None:
        stamp = stamp.tz_localize(None)
    first, last = pd.Timestamp("1677-09-22"), pd.Timestamp("2262-01-01")  # room for a horizon
    if not first <= stamp <= last:
        raise ConfigError(f"{what}={value!r}: outside the supported dates {first.date()} to {last.date()}")
    return stamp.as_unit("ns").normalize()


def parse_timestamps(values: pd.Series, timezone: str, fmt: str | None = None, where: str = "") -> pd.Series:
    """Parse to naive datetime64[us] wall-clock time in `timezone` (us: far-future values stay readable).

    The rule: tz-aware values (and strings with an offset, 'Z', 'UTC' or 'GMT') are converted to
    `timezone`; naive values are taken to be in `timezone` already. Unparseable values become NaT. Without
    `fmt`, numeric dates (05/06/2024) are read day-first or month-first for the whole column, as the
    column's own values show; a column that mixes both, or does not tell, fails (`where` names it).
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return aware_to_zone(values, timezone)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[us]")
    plain = _plain_iso(values) if fmt is None else None
    if plain is not None:
        return pd.Series(plain, index=values.index)
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    if not (
        pd.api.types.is_object_dtype(values.dtype)
        or pd.api.types.is_string_dtype(values.dtype)
        or isinstance(values.dtype, pd.CategoricalDtype)
    ):
        return out  # numbers are not timestamps: every row is reported as unparseable
    text = values.astype("string").str.strip()
    has_offset = _contains(text, _OFFSET_RE)
    for aware, subset in ((False, text[~has_offset & text.notna()]), (True, text[has_offset])):
        if not subset.empty:
            out.loc[subset.index] = _parse_subset(subset, fmt, aware, timezone, where)
    return out


def _contains(text: pd.Series, pattern: str) -> np.ndarray:
    """`text.str.contains(pattern)` (nulls: False). ASCII text goes to Arrow's regex engine: pandas runs
    this pattern through Python's `re` row by row, a quarter of a second per 100k rows. Only on ASCII do
    the two agree on `\\d` and `\\s`, so other text keeps the `re` path."""
    array = pa.array(text.array)
    if len(array) and pc.all(pc.string_is_ascii(array)).as_py() is not False:
        return pc.fill_null(pc.match_substring_regex(array, pattern), False).to_numpy(zero_copy_only=False)
    return text.str.contains(pattern, regex=True, na=False).to_numpy()


def _plain_iso(values: pd.Series) -> np.ndarray | None:
    """A short text column all in plain ISO 8601 (a JSON request's times) as datetime64[us], read by numpy;
    None for anything else (nulls, zones, other layouts, times numpy refuses, e.g. Feb 30): the general
    path reads those."""
    if (
        len(values) > SMALL_COLUMN
        or not (pd.api.types.is_object_dtype(values.dtype) or pd.api.types.is_string_dtype(values.dtype))
        or not values.index.is_unique
    ):
        return None
    text = values.to_numpy(dtype=object)
    # years the general path reads in nanoseconds too (so no bound differs)
    if not all(isinstance(v, str) and _PLAIN_ISO.fullmatch(v) and "1678" <= v[:4] <= "2261" for v in text):
        return None
    try:
        return text.astype("datetime64[us]")
    except ValueError:
        return None


def aware_to_zone(values: pd.Series, timezone: str) -> pd.Series:
    """Zone-aware times as naive wall-clock time in `timezone`. Times beyond years 1-9999 (which zone rules,
    written for Python's datetime, cannot convert) stay in UTC: they fail the range checks anyway."""
    utc = values.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    inside = ((utc > pd.Timestamp("0001-01-02")) & (utc < pd.Timestamp("9999-12-30"))).to_numpy()
    if inside.any():
        local = values[inside].dt.tz_convert(timezone).dt.tz_localize(None).astype("datetime64[us]")
        utc = utc.mask(inside, local.reindex(utc.index))
    return utc


def _parse_subset(text: pd.Series, fmt: str | None, aware: bool, timezone: str, where: str) -> pd.Series:
    """One subset (all with a zone, or all without) as naive datetime64[us] in `timezone`. A value pandas
    reads with a zone the pattern missed is converted like the others; anything pandas cannot take as a
    column (mixed zones, out-of-range values) is parsed value by value, so it never stops the load."""
    try:
        parsed = _to_datetime(text, fmt, utc=aware, where=where)
        return (
            aware_to_zone(parsed, timezone)
            if isinstance(parsed.dtype, pd.DatetimeTZDtype)
            else (parsed.astype("datetime64[us]"))
        )
    except DataValidationError:
        raise
    except (ValueError, TypeError, OverflowError):
        pass
    distinct = pd.Series(text.unique())
    mapped = {value: _parse_one(value, fmt, timezone) for value in distinct}
    return pd.Series([mapped[v] for v in text], index=text.index, dtype="datetime64[us]")


def _parse_one(value: str, fmt: str | None, timezone: str) -> pd.Timestamp:
    try:
        stamp = pd.to_datetime(value, format=fmt) if fmt else pd.Timestamp(value)
        return stamp.tz_convert(timezone).tz_localize(None) if stamp.tzinfo is not None else stamp
    except (ValueError, TypeError, OverflowError):
        return pd.NaT


def _to_datetime(text: pd.Series, fmt: str | None, utc: bool, where: str = "") -> pd.Series:
    if fmt:
        return pd.to_datetime(text, format=fmt, errors="coerce", utc=utc)
    parsed = pd.to_datetime(text, format="ISO8601", errors="coerce", utc=utc)
    retry = parsed.isna()
    if retry.any():  # slow path only for rows ISO 8601 could not read (e.g. "12/1/2010 8:26")
        day_first = _day_first(text[retry], where)
        parsed[retry] = pd.to_datetime(
            text[retry], format="mixed", dayfirst=day_first, errors="coerce", utc=utc
        )
    return parsed


def _day_first(text: pd.Series, where: str) -> bool:
    """Whether a column's numeric dates are day-first (23/05/2024) or month-first (05/23/2024), decided
    once for the column: a parser that decides per value reads 05/06 one way and 23/05 the other."""
    fields = text.str.extract(_NUMERIC_DATE).apply(pd.to_numeric, errors="coerce")
    first, second = fields[0], fields[1]
    day_first, month_first = first > 12, second > 12
    where = f"{where}: " if where else ""
    fix = "set data.timestamp_format (e.g. '%d/%m/%Y %H:%M' or '%m/%d/%Y %H:%M')"
    if day_first.any() and month_first.any():
        a, b = text[day_first.to_numpy()].iloc[0], text[month_first.to_numpy()].iloc[0]
        raise DataValidationError(
            f"{where}dates are day-first in some rows ({a!r}) and month-first in others ({b!r}); {fix}"
        )
    if day_first.any() or month_first.any():
        return bool(day_first.any())
    unclear = (first != second) & first.notna()
    if unclear.any():
        example = text[unclear.to_numpy()].iloc[0]
        raise DataValidationError(
            f"{where}dates like {example!r} read as day-first or month-first and no value tells which; {fix}"
        )
    return False


def coerce_numeric(raw: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Return float64 values and a mask of values that are present but not numbers."""
    if pd.api.types.is_bool_dtype(raw.dtype) or pd.api.types.is_numeric_dtype(raw.dtype):
        values = raw.to_numpy(dtype="float64", na_value=np.nan)
        return values, np.zeros(len(raw), dtype=bool)
    if raw.dtype.kind in "mM" or isinstance(raw.dtype, pd.DatetimeTZDtype):  # times are not amounts
        return np.full(len(raw), np.nan), raw.notna().to_numpy()
    text = raw.astype("string").str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    non_numeric = np.isnan(values) & text.notna().to_numpy() & (text != "").fillna(False).to_numpy()
    return values, non_numeric


def canonical_categorical(raw: pd.Series) -> pd.Series:
    """Strings as a categorical with nulls mapped to the explicit MISSING category."""
    return _recode(raw, missing=MISSING)
