"""Raw values to canonical ones: ids and categories as normalised text, timestamps as wall-clock time in
the configured zone, numbers as float64. Invalid values come back marked (NaT, NaN, a mask), never
dropped here: validation decides what happens to them."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

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


def _labels(categories: pd.Index) -> np.ndarray:
    """`_label` for every category, vectorised for the common string and float cases (1M ids)."""
    if pd.api.types.is_string_dtype(categories.dtype) and not pd.api.types.is_object_dtype(categories.dtype):
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
    cat = values.array if isinstance(values.dtype, pd.CategoricalDtype) else pd.Categorical(values)
    labels = _labels(cat.categories)
    if missing is not None:  # category text, not ids: internal tokens are out of its reach
        labels = escape_text(labels)
    valid = np.array([lab is not None for lab in labels], dtype=bool)
    uniq = np.array(sorted(set(labels[valid])), dtype=object)
    position = np.full(len(labels) + 1, -1, dtype=np.int64)  # the last slot serves code -1 (null)
    position[:-1][valid] = np.searchsorted(uniq, labels[valid].astype(str)) if valid.any() else []
    codes = position[np.asarray(cat.codes)]
    if missing is not None and (codes < 0).any():
        uniq = np.append(uniq, missing)
        codes = np.where(codes < 0, len(uniq) - 1, codes)
    categories = pd.Index(uniq.astype(str), dtype=object) if len(uniq) else pd.Index([], dtype=object)
    return pd.Series(pd.Categorical.from_codes(codes, categories=categories), index=values.index)


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
    out = pd.Series(pd.NaT, index=values.index, dtype="datetime64[us]")
    if not (
        pd.api.types.is_object_dtype(values.dtype)
        or pd.api.types.is_string_dtype(values.dtype)
        or isinstance(values.dtype, pd.CategoricalDtype)
    ):
        return out  # numbers are not timestamps: every row is reported as unparseable
    text = values.astype("string").str.strip()
    has_offset = text.str.contains(_OFFSET_RE, regex=True, na=False)
    for aware, subset in ((False, text[~has_offset & text.notna()]), (True, text[has_offset])):
        if not subset.empty:
            out.loc[subset.index] = _parse_subset(subset, fmt, aware, timezone, where)
    return out


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
