"""Cell values of a long table: each distinct value parsed once into text and kind."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

INT_RE = re.compile(r"0|-?[1-9][0-9]*")  # canonical integers only: "01" stays a name
_INT_CAP = 2**62  # integers beyond this are out of range of any class index anyway
_KNOWN_SHOWN = 20  # class names listed in an error message


class Values(NamedTuple):
    """One column, normalised per row."""

    text: np.ndarray  # object: the value as text, "" where missing
    missing: np.ndarray  # bool: None, NaN, NA or ""
    is_int: np.ndarray  # bool: an integer (int, whole float or canonical integer string)
    value: np.ndarray  # int64: the integer where is_int, else 0


_MISSING = ("", True, False, 0)


def _clip(i: int) -> int:
    return max(-_INT_CAP, min(_INT_CAP, i))


def parse(v: Any) -> tuple[str, bool, bool, int]:
    """(text, missing, is_int, value) of one cell."""
    if v is None or v is pd.NA:
        return _MISSING
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)), False, False, 0
    if isinstance(v, (int, np.integer)):
        return str(int(v)), False, True, _clip(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return _MISSING
        if f.is_integer():
            return str(int(f)), False, True, _clip(int(f))
        return str(f), False, False, 0
    s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    if s == "":
        return _MISSING
    if INT_RE.fullmatch(s):
        return s, False, True, _clip(int(s))
    return s, False, False, 0


def parse_uniques(uniques: Iterable[Any]) -> Values:
    """Each of ``uniques`` parsed, plus a missing value at the end (for code ``-1``)."""
    parsed = [parse(v) for v in uniques] + [_MISSING]
    return Values(
        np.array([p[0] for p in parsed], dtype=object),
        np.array([p[1] for p in parsed], dtype=bool),
        np.array([p[2] for p in parsed], dtype=bool),
        np.array([p[3] for p in parsed], dtype=np.int64),
    )


class CodedText:
    """A column's text as codes into its distinct values, gathered only where indexed
    (a batch's rows need their text only where a row is reported)."""

    def __init__(self, uniques: np.ndarray, codes: np.ndarray):
        self.uniques = uniques  # object: text of each distinct value, then ""
        self.codes = codes

    def __getitem__(self, index: Any) -> Any:
        return self.uniques[self.codes[index]]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.codes.shape


def take(vals: Values, codes: np.ndarray) -> Values:
    """The values at ``codes`` (``-1``: the last, missing, entry of :func:`parse_uniques`),
    with the text left as :class:`CodedText`."""
    text: Any = CodedText(vals.text, codes)
    return Values(text, vals.missing[codes], vals.is_int[codes], vals.value[codes])


def from_codes(codes: np.ndarray, uniques: Iterable[Any]) -> Values:
    """Values of a factorised column: ``uniques`` are parsed, then indexed by ``codes``
    (code ``-1`` is a missing value)."""
    u = parse_uniques(uniques)
    return Values(u.text[codes], u.missing[codes], u.is_int[codes], u.value[codes])


def values(column: Any, n: int) -> Values:
    """Normalise a column (``None``: absent, every row missing)."""
    if column is None:
        return from_codes(np.full(n, -1, np.int64), [])
    codes, uniques = pd.factorize(np.asarray(column, dtype=object))
    return from_codes(codes, uniques)


def known(classes: Sequence[str]) -> str:
    """The class names for an error message, cut after the first few."""
    shown = ", ".join(classes[:_KNOWN_SHOWN])
    if len(classes) > _KNOWN_SHOWN:
        shown += f", ... ({len(classes)} classes)"
    return shown or "(none)"
