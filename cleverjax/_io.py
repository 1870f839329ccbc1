"""Annotation data in and out: long tables (CSV, Parquet, DataFrames) and DCIC's JSON files.

A *long annotation table* has one row per annotation and the columns ``task``, ``worker``
and ``label`` (crowd-kit's convention), plus an optional ``proposal``: the class shown to
the annotator, empty when none was shown. :func:`read_annotations` validates such a table
and encodes it as integer indices (:class:`AnnotationTable`); :func:`to_counts` turns it
into the dense per-task class counts that the rest of the package works on
(:func:`cleverjax.soft_labels` turns them into label distributions). :func:`counts_to_table` and
:func:`annotations_to_table` go the other way, from simulated arrays to a long table that
:func:`write_table` saves as CSV or Parquet.

Every problem in a file is reported with the file, the row and the column. Nothing is
dropped silently: with ``on_error="skip"`` the rows that are not used are listed in
:attr:`AnnotationTable.rejected`, and ``num_rows_read == num_annotations + len(rejected)``.

The DCIC benchmark (Schmarje et al., 2022) stores raw annotations as a JSON list of
annotation sets (:func:`read_dcic_annotations`) and each fold's result as one JSON file
(:func:`write_dcic_output`, :func:`read_dcic_output`).
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from jaxtyping import Float, Int

from ._checks import SIMPLEX_ATOL, ArrayIn, check_choice

OnError = Literal["raise", "skip"]
"""What :func:`read_annotations` does with a bad row: ``"raise"`` a ``ValueError`` for the
first one (default), or ``"skip"`` it, list it in ``rejected`` and warn."""

PathIn = str | os.PathLike
"""A file path: a ``str`` or a :class:`os.PathLike` such as :class:`pathlib.Path`."""

_ON_ERROR = ("raise", "skip")
_CSV_SUFFIXES = (".csv",)
_PARQUET_SUFFIXES = (".parquet", ".pq")
_COLUMNS = ("task", "worker", "label")
_INT_RE = re.compile(r"0|-?[1-9][0-9]*")  # canonical integers only: "01" stays a name
_INT_CAP = 2**62  # integers beyond this are out of range of any class index anyway
_DATAFRAME = "<DataFrame>"
_KNOWN_SHOWN = 20  # class names listed in an error message


# ----------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------


class AnnotationTable(NamedTuple):
    """A validated long annotation table, encoded as integer indices.

    Attributes:
        task: ``(annotations,)`` int32 index into ``tasks`` of each annotation.
        worker: ``(annotations,)`` int32 index into ``workers``.
        label: ``(annotations,)`` int32 index into ``classes`` of the chosen class.
        proposal: ``(annotations,)`` int32 index into ``classes`` of the class shown,
            ``-1`` where no proposal was shown.
        tasks: task names in index order (order of first appearance).
        workers: worker names in index order (order of first appearance).
        classes: class names in index order.
        rejected: the rows that were not used, one per row, with columns ``row`` (the
            row's number as described in :func:`read_annotations`), ``column``, ``value``
            (the offending cell as text) and ``reason``.
        source: the path read, or ``"<DataFrame>"``.
    """

    task: Int[np.ndarray, " annotations"]
    worker: Int[np.ndarray, " annotations"]
    label: Int[np.ndarray, " annotations"]
    proposal: Int[np.ndarray, " annotations"]
    tasks: tuple[str, ...]
    workers: tuple[str, ...]
    classes: tuple[str, ...]
    rejected: pd.DataFrame
    source: str

    @property
    def num_annotations(self) -> int:
        """Number of annotations used."""
        return int(self.label.shape[0])

    @property
    def num_rows_read(self) -> int:
        """Rows read from the source: annotations used plus rows rejected."""
        return self.num_annotations + len(self.rejected)

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def num_workers(self) -> int:
        return len(self.workers)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_frame(self) -> pd.DataFrame:
        """The used annotations as a long table of names (``proposal`` is ``""`` if none)."""
        proposal = np.asarray(("",) + self.classes, dtype=object)[self.proposal + 1]
        return pd.DataFrame(
            {
                "task": np.asarray(self.tasks, dtype=object)[self.task],
                "worker": np.asarray(self.workers, dtype=object)[self.worker],
                "label": np.asarray(self.classes, dtype=object)[self.label],
                "proposal": proposal,
            }
        )


class Counts(NamedTuple):
    """Per-task class counts, split by whether a proposal was shown (see :func:`to_counts`).

    Attributes:
        biased: ``(tasks, classes)`` int32 counts of annotations made with a proposal shown.
        unbiased: ``(tasks, classes)`` int32 counts of annotations made without a proposal.
        proposals: ``(tasks,)`` int32 class shown with each task, ``-1`` if never shown.
        tasks: task names in row order.
        classes: class names in column order.
    """

    biased: Int[np.ndarray, "tasks classes"]
    unbiased: Int[np.ndarray, "tasks classes"]
    proposals: Int[np.ndarray, " tasks"]
    tasks: tuple[str, ...]
    classes: tuple[str, ...]


class DCICOutput(NamedTuple):
    """One fold's output file of the DCIC benchmark (see :func:`read_dcic_output`).

    Attributes:
        name: the dataset name.
        v_fold: the validation fold, 1 to 5.
        classes: class names in column order.
        paths: image paths, one per row of ``soft_labels``.
        splits: each image's split, e.g. ``"train"``, ``"val"`` or ``"test"``.
        soft_labels: ``(images, classes)`` label distributions as stored; a row of NaN
            where the file holds no soft label (``"soft_gt": []``, DCIC's "unknown").
        budget: annotations spent.
        weighted_budget: annotations spent, weighted by their cost.
    """

    name: str
    v_fold: int
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    splits: tuple[str, ...]
    soft_labels: Float[np.ndarray, "images classes"]
    budget: float
    weighted_budget: float


# ----------------------------------------------------------------------------------
# Cell values
# ----------------------------------------------------------------------------------


class _Values(NamedTuple):
    """One column, normalised per row."""

    text: np.ndarray  # object: the value as text, "" where missing
    missing: np.ndarray  # bool: None, NaN, NA or ""
    is_int: np.ndarray  # bool: an integer (int, whole float or canonical integer string)
    value: np.ndarray  # int64: the integer where is_int, else 0


def _parse(v: Any) -> tuple[str, bool, bool, int]:
    """(text, missing, is_int, value) of one cell."""
    if v is None or v is pd.NA:
        return "", True, False, 0
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v)), False, False, 0
    if isinstance(v, (int, np.integer)):
        i = int(v)
        return str(i), False, True, max(-_INT_CAP, min(_INT_CAP, i))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "", True, False, 0
        if f.is_integer():
            i = int(f)
            return str(i), False, True, max(-_INT_CAP, min(_INT_CAP, i))
        return str(f), False, False, 0
    s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    if s == "":
        return "", True, False, 0
    if _INT_RE.fullmatch(s):
        return s, False, True, max(-_INT_CAP, min(_INT_CAP, int(s)))
    return s, False, False, 0


def _values(column: Any, n: int) -> _Values:
    """Normalise a column; each distinct value is parsed once."""
    if column is None:
        return _Values(
            np.full(n, "", dtype=object),
            np.ones(n, bool),
            np.zeros(n, bool),
            np.zeros(n, np.int64),
        )
    codes, uniques = pd.factorize(np.asarray(column, dtype=object))
    parsed = [_parse(v) for v in uniques] + [("", True, False, 0)]  # code -1: missing
    text = np.array([p[0] for p in parsed], dtype=object)
    missing = np.array([p[1] for p in parsed], dtype=bool)
    is_int = np.array([p[2] for p in parsed], dtype=bool)
    value = np.array([p[3] for p in parsed], dtype=np.int64)
    return _Values(text[codes], missing[codes], is_int[codes], value[codes])


def _known(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:_KNOWN_SHOWN])
    if len(classes) > _KNOWN_SHOWN:
        shown += f", ... ({len(classes)} classes)"
    return shown or "(none)"


# ----------------------------------------------------------------------------------
# Validation and encoding of a long table
# ----------------------------------------------------------------------------------


class _Frame(NamedTuple):
    """A table to validate, with what is needed to say where a problem lies."""

    columns: dict[str, Any]  # canonical column name -> values (None if absent)
    n: int
    rows: np.ndarray  # int64: the number reported for each row
    source: str
    where: Callable[[int], str]  # position -> "row 7" or "set 3, annotation 17"
    names: dict[str, str]  # canonical column name -> its name in the source
    field: str  # "column" or "key"


class _Problems:
    """The first problem of each row, in the order the checks run."""

    def __init__(self, n: int):
        self.bad = np.zeros(n, bool)
        self.column = np.full(n, "", dtype=object)
        self.value = np.full(n, "", dtype=object)
        self.reason = np.full(n, "", dtype=object)

    def add(
        self, mask: np.ndarray, column: str, value: np.ndarray, reason: Callable[[int], str]
    ) -> None:
        new = np.flatnonzero(mask & ~self.bad)
        self.bad[new] = True
        self.column[new] = column
        self.value[new] = value[new]
        self.reason[new] = [reason(int(i)) for i in new]


def _phrase(frame: _Frame, column: str) -> str:
    parts = column.split(",")
    if len(parts) == 1:
        return f"{frame.field} {column!r}"
    return f"{frame.field}s " + ", ".join(repr(p) for p in parts)


def _message(frame: _Frame, problems: _Problems, pos: int) -> str:
    return (
        f"{frame.source}, {frame.where(pos)}, {_phrase(frame, problems.column[pos])}: "
        f"{problems.reason[pos]}"
    )


def _lookup(values: _Values, mask: np.ndarray, table: dict[str, int]) -> np.ndarray:
    """Class index of each row's text under ``table`` (-1 if absent or outside ``mask``)."""
    out = np.full(values.text.shape[0], -1, np.int64)
    if mask.any():
        codes, uniques = pd.factorize(values.text[mask])
        found = np.array([table.get(u, -1) for u in uniques], dtype=np.int64)
        out[mask] = found[codes]
    return out


def _encode(
    frame: _Frame,
    classes: tuple[str, ...] | None,
    on_error: str,
    *,
    check_duplicates: bool = True,
    skipped: tuple[np.ndarray, str, str] | None = None,
) -> tuple[AnnotationTable, int, str]:
    """Validate and encode; return the table, the number of rejected rows (not counting
    ``skipped``, rows rejected by design) and the first problem's message."""
    n = frame.n
    name = frame.names
    task = _values(frame.columns["task"], n)
    worker = _values(frame.columns["worker"], n)
    label = _values(frame.columns["label"], n)
    prop = _values(frame.columns.get("proposal"), n)
    has_prop = ~(prop.missing | (prop.is_int & (prop.value == -1)))

    problems = _Problems(n)
    if skipped is not None:
        mask, column, reason = skipped
        problems.add(mask, name[column], label.text, lambda i: reason)
    by_design = problems.bad.copy()
    for col, vals in (("task", task), ("worker", worker), ("label", label)):
        problems.add(vals.missing, name[col], vals.text, lambda i: "missing value")

    # Class names or class indices: decide the kind, then the classes, then map.
    ok = ~problems.bad
    ok_prop = ok & has_prop
    by_name = classes is not None and any(_INT_RE.fullmatch(c) for c in classes)
    if by_name:
        int_kind = False
        odd_label = np.zeros(n, bool)
        odd_prop = np.zeros(n, bool)
    else:
        n_int = int(label.is_int[ok].sum() + prop.is_int[ok_prop].sum())
        n_all = int(ok.sum() + ok_prop.sum())
        if n_int * 2 != n_all:
            int_kind = n_int * 2 > n_all
        else:  # a tie: the first value decides
            first = int(np.argmax(ok)) if ok.any() else 0
            int_kind = bool(label.is_int[first])
        odd_label = ok & (label.is_int != int_kind)
        odd_prop = ok_prop & (prop.is_int != int_kind)

    def mixed(values: _Values, usual: np.ndarray) -> Callable[[int], str]:
        example = np.flatnonzero(usual)
        ex = ""
        if example.size:
            ex = f" (e.g. {frame.where(int(example[0]))}: {values.text[example[0]]!r})"
        kind = "integers" if int_kind else "class names"

        def reason(i: int) -> str:
            this = "an integer" if values.is_int[i] else "a class name"
            return (
                f"mixed-type labels: {values.text[i]!r} is {this} but most labels are "
                f"{kind}{ex}; use class names or class indices throughout"
            )

        return reason

    given = classes is not None
    if classes is None:
        good_label = ok & ~odd_label & ~(label.is_int & (label.value < 0))
        good_prop = ok_prop & ~odd_prop & ~(prop.is_int & (prop.value < 0))
        seen = set(label.text[good_label]) | set(prop.text[good_prop])
        classes = tuple(sorted(seen, key=int) if int_kind else sorted(seen))
    num_classes = len(classes)
    by_index = given and int_kind and not by_name  # integers index the given classes
    if by_index:
        table = {str(i): i for i in range(num_classes)}
    else:
        table = {c: i for i, c in enumerate(classes)}

    def unknown(values: _Values) -> Callable[[int], str]:
        def reason(i: int) -> str:
            t = values.text[i]
            if int_kind and not by_name and values.value[i] < 0:
                return f"negative class index {t}; class indices must be >= 0"
            if by_index:
                return (
                    f"class index {t} is out of range for {num_classes} classes ({_known(classes)})"
                )
            return f"{t!r} is not a known class; known: {_known(classes)}"

        return reason

    label_idx = _lookup(label, ok & ~odd_label, table)
    prop_idx = _lookup(prop, ok_prop & ~odd_prop, table)
    problems.add(odd_label, name["label"], label.text, mixed(label, ok & ~odd_label))
    problems.add(ok & (label_idx < 0), name["label"], label.text, unknown(label))
    problems.add(odd_prop, name["proposal"], prop.text, mixed(prop, ok_prop & ~odd_prop))
    problems.add(ok_prop & (prop_idx < 0), name["proposal"], prop.text, unknown(prop))

    # One proposal per task: a later row showing another class conflicts with the first.
    ok = ~problems.bad
    shown = np.flatnonzero(ok & has_prop)
    if shown.size:
        t_code, _ = pd.factorize(task.text[shown])
        _, first = np.unique(t_code, return_index=True)
        first_pos = shown[first[t_code]]
        conflict = np.zeros(n, bool)
        conflict[shown] = prop_idx[shown] != prop_idx[first_pos]
        first_of = np.zeros(n, np.int64)
        first_of[shown] = first_pos

        def conflicting(i: int) -> str:
            j = int(first_of[i])
            return (
                f"task {task.text[i]!r} is shown proposal {classes[prop_idx[i]]!r} here but "
                f"{classes[prop_idx[j]]!r} in {frame.where(j)}; SPA assumes one proposal "
                f"per task"
            )

        problems.add(conflict, name["proposal"], prop.text, conflicting)

    # Exact duplicates: same task, worker, label and proposal as an earlier row.
    ok = ~problems.bad
    if check_duplicates and ok.any():
        keep = np.flatnonzero(ok)
        key = pd.DataFrame(
            {
                "t": task.text[keep],
                "w": worker.text[keep],
                "l": label_idx[keep],
                "p": np.where(has_prop[keep], prop_idx[keep], -1),
            }
        )
        group = key.groupby(["t", "w", "l", "p"], sort=False).ngroup().to_numpy()
        _, first = np.unique(group, return_index=True)
        first_pos = keep[first[group]]
        dup = np.zeros(n, bool)
        dup[keep] = first_pos != keep
        first_of = np.zeros(n, np.int64)
        first_of[keep] = first_pos
        cols = [name["task"], name["worker"], name["label"]]
        if frame.columns.get("proposal") is not None:
            cols.append(name["proposal"])
        texts = [task.text, worker.text, label.text, prop.text][: len(cols)]
        row_text = np.full(n, "", dtype=object)
        for i in np.flatnonzero(dup):
            row_text[i] = ",".join(t[i] for t in texts)
        problems.add(
            dup,
            ",".join(cols),
            row_text,
            lambda i: f"exact duplicate of {frame.where(int(first_of[i]))}",
        )

    counted = problems.bad & ~by_design
    num_rejected = int(counted.sum())
    first_message = ""
    if num_rejected:
        first_message = _message(frame, problems, int(np.argmax(counted)))
        if on_error == "raise":
            raise ValueError(first_message)
    used = ~problems.bad
    if not used.any():
        if num_rejected:
            raise ValueError(f"{frame.source}: all {n} rows were rejected; first: {first_message}")
        raise ValueError(f"{frame.source}: no annotations (every row was skipped)")

    task_idx, task_names = pd.factorize(task.text[used])
    worker_idx, worker_names = pd.factorize(worker.text[used])
    bad = np.flatnonzero(problems.bad)
    rejected = pd.DataFrame(
        {
            "row": frame.rows[bad].astype(np.int64),
            "column": problems.column[bad].astype(str),
            "value": problems.value[bad].astype(str),
            "reason": problems.reason[bad].astype(str),
        }
    )
    result = AnnotationTable(
        task=task_idx.astype(np.int32),
        worker=worker_idx.astype(np.int32),
        label=label_idx[used].astype(np.int32),
        proposal=np.where(has_prop[used], prop_idx[used], -1).astype(np.int32),
        tasks=tuple(str(t) for t in task_names),
        workers=tuple(str(w) for w in worker_names),
        classes=tuple(classes),
        rejected=rejected,
        source=frame.source,
    )
    return result, num_rejected, first_message


# ----------------------------------------------------------------------------------
# Reading long tables
# ----------------------------------------------------------------------------------


def _file_kind(path: PathIn, what: str) -> tuple[Path, str]:
    """The path and its format, ``"csv"`` or ``"parquet"``, from the suffix."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{what}` must be a path (str or os.PathLike); got {type(path).__name__}")
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _CSV_SUFFIXES:
        return p, "csv"
    if suffix in _PARQUET_SUFFIXES:
        return p, "parquet"
    raise ValueError(
        f"{path}: cannot tell the file format from the suffix {suffix or '(none)'!r} "
        f"(`{what}`); use one of {', '.join(_CSV_SUFFIXES + _PARQUET_SUFFIXES)}"
    )


def _require_file(p: Path, shown: str) -> None:
    if not p.exists():
        raise FileNotFoundError(f"{shown}: no such file")
    if not p.is_file():
        raise ValueError(f"{shown}: not a file")


def _read_csv(p: Path, shown: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Every cell as text; row numbers as in the file (the header is row 1)."""
    options: dict[str, Any] = dict(
        dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False
    )
    try:
        with warnings.catch_warnings():
            # pandas warns (rather than fails) when the first data row has too many fields.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(p, encoding="utf-8-sig", **options)
            header = pd.read_csv(p, encoding="utf-8-sig", header=None, nrows=1, **options)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{shown}: no annotations (the file is empty)") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as e:
        raise ValueError(f"{shown}: cannot be read as CSV: {e}") from e
    raw = [str(c) for c in header.iloc[0].tolist()] if len(header) else []
    for col in (*_COLUMNS, "proposal"):
        if raw.count(col) > 1:
            raise ValueError(
                f"{shown}: column {col!r} appears {raw.count(col)} times in the header"
            )
    rows = np.arange(len(df), dtype=np.int64) + 2
    # Blank lines (and rows of empty cells) carry no annotation: they are not rows read.
    blank = (df == "").all(axis=1).to_numpy() if len(df.columns) else np.zeros(len(df), bool)
    return df.loc[~blank].reset_index(drop=True), rows[~blank]


def _read_parquet(p: Path, shown: str) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except (ValueError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"{shown}: cannot be read as Parquet: {e}") from e


def _table_frame(df: pd.DataFrame, rows: np.ndarray, shown: str) -> _Frame:
    columns = [str(c) for c in df.columns]
    missing = [c for c in _COLUMNS if c not in columns]
    if missing:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise ValueError(
            f"{shown}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found columns: {found}"
        )
    for col in (*_COLUMNS, "proposal"):
        if columns.count(col) > 1:
            raise ValueError(f"{shown}: column {col!r} appears {columns.count(col)} times")
    if len(df) == 0:
        raise ValueError(f"{shown}: no annotations (no data rows)")
    index = {c: i for i, c in enumerate(columns)}
    data = {c: (df.iloc[:, index[c]] if c in index else None) for c in (*_COLUMNS, "proposal")}
    return _Frame(
        columns=data,
        n=len(df),
        rows=rows,
        source=shown,
        where=lambda i: f"row {rows[i]}",
        names={c: c for c in (*_COLUMNS, "proposal")},
        field="column",
    )


def _check_names(name: str, names: Any, size: int | None = None) -> tuple[str, ...]:
    """A sequence of distinct, non-empty strings (of length ``size`` if given)."""
    if isinstance(names, (str, bytes)) or not isinstance(names, (Sequence, np.ndarray, pd.Index)):
        raise TypeError(f"`{name}` must be a sequence of names; got {type(names).__name__}")
    out = tuple(names)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise TypeError(f"`{name}[{i}]` must be a str; got {type(v).__name__} {v!r}")
        if v == "":
            raise ValueError(f"`{name}[{i}]` is an empty name; names must be non-empty")
    if size is not None and len(out) != size:
        raise ValueError(f"`{name}` must have {size} names; got {len(out)}")
    seen: dict[str, int] = {}
    for i, v in enumerate(out):
        if v in seen:
            raise ValueError(f"`{name}` has {v!r} twice, at positions {seen[v]} and {i}")
        seen[v] = i
    return out


def _finish(frame: _Frame, classes: Any, on_error: str, **kwargs: Any) -> AnnotationTable:
    check_choice("on_error", on_error, _ON_ERROR)
    names = None
    if classes is not None:
        names = _check_names("classes", classes)
        if not names:
            raise ValueError("`classes` must name at least one class; got an empty sequence")
    table, num_rejected, first = _encode(frame, names, on_error, **kwargs)
    if num_rejected:
        warnings.warn(
            f"{frame.source}: rejected {num_rejected} of {frame.n} rows (listed in "
            f"`.rejected`); first: {first}",
            UserWarning,
            stacklevel=3,
        )
    return table


def read_annotations(
    source: PathIn | pd.DataFrame,
    *,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> AnnotationTable:
    """Read and validate a long annotation table from CSV, Parquet or a DataFrame.

    The table has one row per annotation and the columns ``task``, ``worker`` and
    ``label`` (crowd-kit's convention), and optionally ``proposal``: the class shown to
    the annotator. An empty cell, NaN, None or ``-1`` in ``proposal`` means that no
    proposal was shown. Other columns are ignored. CSV cells are read as text, so names
    such as ``"01"`` are kept as written; an empty cell is a missing value.

    Labels and proposals are class names or class indices (integers), not both:

    * With ``classes`` given, names must be among them and integers index them, in
      ``[0, len(classes))``. If some class names are themselves integers (a rating scale
      ``"1"`` to ``"5"``, say), every label is matched by name.
    * Without ``classes``, the classes are the distinct labels and proposals, sorted:
      numerically for integers (named ``"0"``, ``"1"``, ...), else lexicographically. A
      class nobody chose or was shown is then absent: give ``classes`` to keep it.

    Task and worker names are text; their indices follow the order of first appearance.

    Rows are numbered as in the source: in a CSV file the header is row 1 and the first
    data row is row 2 (the line number, unless a quoted cell spans lines); in a Parquet
    file or a DataFrame, the row's 0-based position. Blank CSV lines are not rows.

    A row is bad if a task, worker or label is missing; a label or proposal is not a
    known class, or its type differs from most labels ("mixed-type labels"); it shows its
    task another proposal than the task's first row with one does (SPA assumes one
    proposal per task; rows without a proposal are fine); or it repeats an earlier row
    exactly (same task, worker, label and proposal).

    Args:
        source: a path to a ``.csv``, ``.parquet`` or ``.pq`` file, or a DataFrame.
        classes: keyword-only; the class names in index order (default: from the data).
        on_error: keyword-only; ``"raise"`` (default) raises a ``ValueError`` for the
            first bad row; ``"skip"`` leaves bad rows out, lists them in ``rejected`` and
            warns with their number.

    Returns:
        An :class:`AnnotationTable`; ``num_rows_read == num_annotations + len(rejected)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for an unknown suffix; a file pandas cannot parse; missing required
            columns; no data rows; with ``on_error="raise"``, a bad row (the message
            names the file, the row and the column); with ``"skip"``, if every row is bad.
        TypeError: if ``source`` is neither a path nor a DataFrame.

    Warns:
        UserWarning: with ``on_error="skip"``, when rows were rejected.

    Examples:
        >>> import pandas as pd, cleverjax as cj
        >>> df = pd.DataFrame({"task": ["a", "a", "b"], "worker": ["w1", "w2", "w1"],
        ...                    "label": ["cat", "dog", "dog"], "proposal": ["cat", "", ""]})
        >>> table = cj.read_annotations(df)
        >>> table.classes, table.tasks, table.label.tolist(), table.proposal.tolist()
        (('cat', 'dog'), ('a', 'b'), [0, 1, 1], [0, -1, -1])
        >>> bad = pd.DataFrame({"task": ["a"], "worker": ["w1"], "label": ["dgo"]})
        >>> cj.read_annotations(bad, classes=["cat", "dog"])
        Traceback (most recent call last):
        ...
        ValueError: <DataFrame>, row 0, column 'label': 'dgo' is not a known class; known: cat, dog
    """
    check_choice("on_error", on_error, _ON_ERROR)
    if isinstance(source, pd.DataFrame):
        frame = _table_frame(source, np.arange(len(source), dtype=np.int64), _DATAFRAME)
    elif isinstance(source, (str, os.PathLike)):
        p, kind = _file_kind(source, "read_annotations(source=...)")
        shown = str(source)
        _require_file(p, shown)
        if kind == "csv":
            df, rows = _read_csv(p, shown)
        else:
            df = _read_parquet(p, shown)
            rows = np.arange(len(df), dtype=np.int64)
        frame = _table_frame(df, rows, shown)
    else:
        raise TypeError(
            "`read_annotations(source=...)` must be a path or a pandas DataFrame; "
            f"got {type(source).__name__}"
        )
    return _finish(frame, classes, on_error)


# ----------------------------------------------------------------------------------
# Dense arrays
# ----------------------------------------------------------------------------------


def to_counts(table: AnnotationTable) -> Counts:
    """Per-task class counts of an annotation table, split by whether a proposal was shown.

    Args:
        table: an :class:`AnnotationTable` from :func:`read_annotations`.

    Returns:
        :class:`Counts` with ``biased`` and ``unbiased`` of shape ``(tasks, classes)``
        (int32) and ``proposals`` of shape ``(tasks,)``, ``-1`` where never shown.

    Examples:
        >>> import pandas as pd, cleverjax as cj
        >>> df = pd.DataFrame({"task": ["a", "a", "a", "b"], "worker": ["1", "2", "3", "1"],
        ...                    "label": ["cat", "cat", "dog", "dog"],
        ...                    "proposal": ["cat", "cat", "", ""]})
        >>> c = cj.to_counts(cj.read_annotations(df))
        >>> c.biased.tolist(), c.unbiased.tolist(), c.proposals.tolist()
        ([[2, 0], [0, 0]], [[0, 1], [0, 1]], [0, -1])
    """
    if not isinstance(table, AnnotationTable):
        raise TypeError(
            "`table` must be an AnnotationTable (from read_annotations); "
            f"got {type(table).__name__}"
        )
    n, k = len(table.tasks), len(table.classes)
    task = np.asarray(table.task, np.int64)
    label = np.asarray(table.label, np.int64)
    proposal = np.asarray(table.proposal, np.int64)
    shown = proposal >= 0
    flat = task * k + label
    biased = np.bincount(flat[shown], minlength=n * k).reshape(n, k)
    unbiased = np.bincount(flat[~shown], minlength=n * k).reshape(n, k)
    proposals = np.full(n, -1, np.int64)
    proposals[task[shown]] = proposal[shown]  # one proposal per task, checked on reading
    return Counts(
        biased=biased.astype(np.int32),
        unbiased=unbiased.astype(np.int32),
        proposals=proposals.astype(np.int32),
        tasks=tuple(table.tasks),
        classes=tuple(table.classes),
    )


def _int_array(name: str, x: Any, ndim: int) -> np.ndarray:
    """An int64 array of ``ndim`` dimensions; floats must be whole numbers."""
    if isinstance(x, (str, bytes)) or x is None:
        raise TypeError(f"`{name}` must be an array of integers; got {type(x).__name__}")
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"`{name}` must have {ndim} dimension(s); got shape {a.shape}")
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a) | (a != np.round(a))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"`{name}` must hold whole numbers; got {a[where]:g} at index "
                f"{where[0] if ndim == 1 else where} ({int(bad.sum())} such entries)"
            )
    elif not np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        raise TypeError(f"`{name}` must hold integers; got dtype {a.dtype}")
    return a.astype(np.int64)


def _at_least(name: str, a: np.ndarray, lo: int, what: str) -> None:
    bad = a < lo
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"`{name}` must be {what}; got {int(a[where])} at index "
            f"{where[0] if a.ndim == 1 else where} ({int(bad.sum())} such entries)"
        )


def _count_matrix(name: str, counts: Any) -> np.ndarray:
    c = _int_array(name, counts, 2)
    _at_least(name, c, 0, "non-negative counts")
    return c


def _names_or_default(name: str, names: Sequence[str] | None, size: int) -> np.ndarray:
    out = [str(i) for i in range(size)] if names is None else _check_names(name, names, size)
    return np.asarray(out, dtype=object)


def _proposal_vector(proposals: ArrayIn | None, n: int, k: int) -> np.ndarray:
    if proposals is None:
        return np.full(n, -1, np.int64)
    rho = _int_array("proposals", proposals, 1)
    if rho.shape[0] != n:
        raise ValueError(f"`proposals` must have shape ({n},), one per task; got {rho.shape}")
    _at_least("proposals", rho, -1, "class indices or -1 (no proposal)")
    if (rho >= k).any():
        i = int(np.argmax(rho >= k))
        raise ValueError(
            f"`proposals` must be class indices in [0, {k}) or -1; got {int(rho[i])} at index {i}"
        )
    return rho


def counts_to_table(
    counts: ArrayIn,
    proposals: ArrayIn | None = None,
    *,
    tasks: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    worker_prefix: str = "w",
) -> pd.DataFrame:
    """Expand a counts matrix into a long annotation table (one row per annotation).

    Task ``i``'s annotations are listed class by class; the ``j``-th is made by worker
    ``f"{worker_prefix}{j}"``. Reading the table back with :func:`read_annotations` and
    :func:`to_counts` returns ``counts`` (as ``biased`` when proposals are given, else as
    ``unbiased``) provided every task has an annotation and every class is used; give
    ``classes=`` to :func:`read_annotations` to keep unused classes.

    Args:
        counts: ``(tasks, classes)`` non-negative integer counts.
        proposals: ``(tasks,)`` class index shown with each task, ``-1`` for none; default
            none.
        tasks: keyword-only; task names (default ``"0"``, ``"1"``, ...).
        classes: keyword-only; class names (default ``"0"``, ``"1"``, ...).
        worker_prefix: keyword-only; prefix of the worker names.

    Returns:
        A DataFrame with text columns ``task``, ``worker``, ``label`` and ``proposal``
        (``""`` where no proposal was shown).

    Raises:
        ValueError: on negative or non-integer counts, proposals outside ``[-1, classes)``,
            or names of the wrong number.

    Examples:
        >>> import numpy as np, cleverjax as cj
        >>> df = cj.counts_to_table(np.array([[2, 0], [0, 1]]), np.array([0, -1]),
        ...                         classes=["cat", "dog"])
        >>> df.values.tolist()
        [['0', 'w0', 'cat', 'cat'], ['0', 'w1', 'cat', 'cat'], ['1', 'w0', 'dog', '']]
        >>> c = cj.to_counts(cj.read_annotations(df))
        >>> c.biased.tolist(), c.unbiased.tolist()
        ([[2, 0], [0, 0]], [[0, 0], [0, 1]])
    """
    c = _count_matrix("counts", counts)
    n, k = c.shape
    rho = _proposal_vector(proposals, n, k)
    task_names = _names_or_default("tasks", tasks, n)
    class_names = _names_or_default("classes", classes, k)
    per_task = c.sum(axis=1)
    task_idx = np.repeat(np.arange(n), per_task)
    label_idx = np.repeat(np.tile(np.arange(k), n), c.reshape(-1))
    slot = np.arange(task_idx.shape[0]) - np.repeat(np.cumsum(per_task) - per_task, per_task)
    return _long_table(task_names, task_idx, slot, label_idx, rho, class_names, worker_prefix)


def _long_table(
    task_names: np.ndarray,
    task_idx: np.ndarray,
    worker_ids: np.ndarray,
    label_idx: np.ndarray,
    rho: np.ndarray,
    class_names: np.ndarray,
    worker_prefix: str,
) -> pd.DataFrame:
    with_none = np.concatenate([np.asarray([""], dtype=object), class_names])
    workers = worker_prefix + pd.Series(worker_ids, dtype=np.int64).astype(str)
    return pd.DataFrame(
        {
            "task": pd.array(task_names[task_idx], dtype="str"),
            "worker": pd.array(workers.to_numpy(dtype=object), dtype="str"),
            "label": pd.array(class_names[label_idx], dtype="str"),
            "proposal": pd.array(with_none[rho[task_idx] + 1], dtype="str"),
        }
    )


def annotations_to_table(
    labels: ArrayIn,
    proposals: ArrayIn | None = None,
    *,
    workers: ArrayIn | None = None,
    tasks: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    worker_prefix: str = "w",
) -> pd.DataFrame:
    """A long annotation table from per-slot labels, as :func:`cleverjax.simulate_annotations`
    returns them.

    Rows follow the tasks, then the slots; slots holding ``-1`` (no annotation) are left
    out. Worker names are ``f"{worker_prefix}{id}"``. When one worker annotates a task
    twice with the same label (a pool smaller than the annotations per task),
    :func:`read_annotations` reports the repeat as an exact duplicate.

    Args:
        labels: ``(tasks, slots)`` class indices, ``-1`` where a slot holds no annotation.
        proposals: ``(tasks,)`` class index shown with each task, ``-1`` for none; default
            none.
        workers: keyword-only; ``(tasks, slots)`` annotator ids (e.g.
            ``AnnotationBatch.worker``); default: the slot index.
        tasks: keyword-only; task names (default ``"0"``, ``"1"``, ...).
        classes: keyword-only; class names (default ``"0"``, ... up to the largest label
            or proposal).

    Returns:
        A DataFrame with text columns ``task``, ``worker``, ``label`` and ``proposal``.

    Raises:
        ValueError: on labels or proposals outside ``[-1, classes)``, a missing worker id
            for an annotation, or shapes that disagree.

    Examples:
        >>> import numpy as np, cleverjax as cj
        >>> df = cj.annotations_to_table(np.array([[1, 0, -1], [1, -1, -1]]), np.array([1, 1]))
        >>> df.values.tolist()
        [['0', 'w0', '1', '1'], ['0', 'w1', '0', '1'], ['1', 'w0', '1', '1']]
    """
    lab = _int_array("labels", labels, 2)
    n = lab.shape[0]
    _at_least("labels", lab, -1, "class indices or -1 (no annotation)")
    rho_in = None if proposals is None else _int_array("proposals", proposals, 1)
    if classes is not None:
        k = len(_check_names("classes", classes))
    else:
        top = [int(lab.max()) if lab.size else -1]
        if rho_in is not None and rho_in.size:
            top.append(int(rho_in.max()))
        k = max(top) + 1
    if (lab >= k).any():
        where = tuple(int(i) for i in np.argwhere(lab >= k)[0])
        raise ValueError(
            f"`labels` must be class indices in [0, {k}) or -1; got {int(lab[where])} at "
            f"(task, slot) {where}"
        )
    rho = _proposal_vector(rho_in, n, k)
    task_names = _names_or_default("tasks", tasks, n)
    class_names = _names_or_default("classes", classes, k)
    task_idx, slot = np.nonzero(lab >= 0)
    if workers is None:
        worker_ids = slot
    else:
        w = _int_array("workers", workers, 2)
        if w.shape != lab.shape:
            raise ValueError(
                f"`workers` must have the shape of `labels`, {lab.shape}; got {w.shape}"
            )
        worker_ids = w[task_idx, slot]
        if (worker_ids < 0).any():
            i = int(np.argmax(worker_ids < 0))
            raise ValueError(
                f"`workers` must be >= 0 where `labels` holds an annotation; got "
                f"{int(worker_ids[i])} at (task, slot) ({int(task_idx[i])}, {int(slot[i])})"
            )
    return _long_table(
        task_names, task_idx, worker_ids, lab[task_idx, slot], rho, class_names, worker_prefix
    )


def write_table(df: pd.DataFrame, path: PathIn) -> None:
    """Write a table to CSV or Parquet, chosen by the suffix; parent folders are created.

    Args:
        df: the table, e.g. from :func:`counts_to_table`.
        path: a ``.csv``, ``.parquet`` or ``.pq`` file.

    Raises:
        ValueError: for another suffix.

    Examples:
        >>> import pathlib, tempfile, numpy as np, cleverjax as cj
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "out" / "annotations.csv"
        ...     cj.write_table(cj.counts_to_table(np.array([[1, 1]])), path)
        ...     print(path.read_text().splitlines())
        ['task,worker,label,proposal', '0,w0,0,', '0,w1,1,']
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"`df` must be a pandas DataFrame; got {type(df).__name__}")
    p, kind = _file_kind(path, "write_table(path=...)")
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)


# ----------------------------------------------------------------------------------
# DCIC benchmark files
# ----------------------------------------------------------------------------------


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), "a number"
    )


def _load_json(path: PathIn, what: str) -> tuple[Any, str]:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{what}` must be a path (str or os.PathLike); got {type(path).__name__}")
    shown = str(path)
    p = Path(path)
    _require_file(p, shown)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f), shown
    except json.JSONDecodeError as e:
        raise ValueError(f"{shown}: not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{shown}: not UTF-8 text: {e}") from e


def read_dcic_annotations(
    path: PathIn,
    *,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> AnnotationTable:
    """Read the DCIC benchmark's raw ``annotations.json``.

    The file is a JSON list of annotation sets, each an object with ``"annotations"``: a
    list of ``{"image_path": ..., "class_label": ..., "created_at": ...}`` (other keys,
    such as ``"name"`` and ``"user_mail"``, which the published files anonymise, are not
    used). Each entry becomes one annotation: task ``image_path``, worker ``f"set{i}"``
    for the ``i``-th set (from 0), label ``class_label``, no proposal. Entries whose
    ``class_label`` is null are left out, as the benchmark does, and listed in
    ``rejected`` with the reason ``"no class label"`` (without raising or warning).

    One set may hold several annotations of one image (sets generated from a table of
    counts do), so repeated entries are kept as separate annotations, as the benchmark
    counts them. In ``rejected``, ``row`` is the entry's 0-based position in the file
    over all sets, and ``column`` the key.

    Args:
        path: the ``annotations.json`` file.
        classes: keyword-only; the class names in index order (default: the distinct
            labels, sorted, which is the benchmark's order).
        on_error: keyword-only; ``"raise"`` or ``"skip"``, as in :func:`read_annotations`.

    Returns:
        An :class:`AnnotationTable` with tasks in order of first appearance.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not JSON of this structure (the message names the
            file and the set and annotation, e.g. ``set 3, annotation 17: missing key
            'image_path'``), holds no annotations, or (with ``on_error="raise"``) holds a
            label that is not a known class.

    Examples:
        >>> import json, pathlib, tempfile, cleverjax as cj
        >>> sets = [{"name": "INVALID", "user_mail": "INVALID", "annotation_time": 0,
        ...          "dataset_name": "Pig", "annotations": [
        ...     {"image_path": "Pig/a.png", "class_label": "2_Healthy", "created_at": ""},
        ...     {"image_path": "Pig/b.png", "class_label": None, "created_at": ""}]}]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "annotations.json"
        ...     _ = path.write_text(json.dumps(sets))
        ...     table = cj.read_dcic_annotations(path)
        >>> table.tasks, table.workers, table.classes, table.num_rows_read
        (('Pig/a.png',), ('set0',), ('2_Healthy',), 2)

    References:
        Schmarje et al., "Is one annotation enough? A data-centric image classification
        benchmark for noisy and ambiguous label estimation" (NeurIPS 2022),
        https://github.com/Emprime/dcic.
    """
    check_choice("on_error", on_error, _ON_ERROR)
    doc, shown = _load_json(path, "read_dcic_annotations(path=...)")
    if not isinstance(doc, list):
        raise ValueError(f"{shown}: expected a JSON list of annotation sets; got {_json_type(doc)}")
    image_paths: list[Any] = []
    labels: list[Any] = []
    set_of: list[int] = []
    entry_of: list[int] = []
    for i, anno_set in enumerate(doc):
        if not isinstance(anno_set, dict):
            raise ValueError(f"{shown}: set {i}: expected an object; got {_json_type(anno_set)}")
        if "annotations" not in anno_set:
            raise ValueError(f"{shown}: set {i}: missing key 'annotations'")
        entries = anno_set["annotations"]
        if not isinstance(entries, list):
            raise ValueError(
                f"{shown}: set {i}: 'annotations' must be a list; got {_json_type(entries)}"
            )
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(
                    f"{shown}: set {i}, annotation {j}: expected an object; got {_json_type(entry)}"
                )
            for key in ("image_path", "class_label"):
                if key not in entry:
                    raise ValueError(f"{shown}: set {i}, annotation {j}: missing key {key!r}")
                if isinstance(entry[key], (dict, list)):
                    raise ValueError(
                        f"{shown}: set {i}, annotation {j}: {key!r} must be a string; got "
                        f"{_json_type(entry[key])}"
                    )
            image_paths.append(entry["image_path"])
            labels.append(entry["class_label"])
            set_of.append(i)
            entry_of.append(j)
    n = len(labels)
    if n == 0:
        raise ValueError(f"{shown}: no annotations (no annotation sets or all are empty)")
    set_arr = np.asarray(set_of, np.int64)
    entry_arr = np.asarray(entry_of, np.int64)
    label_arr = np.empty(n, dtype=object)
    label_arr[:] = labels
    task_arr = np.empty(n, dtype=object)
    task_arr[:] = image_paths
    frame = _Frame(
        columns={
            "task": task_arr,
            "worker": np.char.add("set", set_arr.astype(str)).astype(object),
            "label": label_arr,
            "proposal": None,
        },
        n=n,
        rows=np.arange(n, dtype=np.int64),
        source=shown,
        where=lambda k: f"set {set_arr[k]}, annotation {entry_arr[k]}",
        names={"task": "image_path", "worker": "set", "label": "class_label", "proposal": "-"},
        field="key",
    )
    no_label = np.fromiter((v is None for v in labels), dtype=bool, count=n)
    return _finish(
        frame,
        classes,
        on_error,
        check_duplicates=False,
        skipped=(no_label, "label", "no class label"),
    )


def _check_v_fold(v_fold: Any, where: str) -> int:
    if (
        isinstance(v_fold, bool)
        or not isinstance(v_fold, (int, np.integer))
        or not (1 <= v_fold <= 5)
    ):
        raise ValueError(f"{where} must be an int from 1 to 5; got {v_fold!r}")
    return int(v_fold)


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number; got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{where} must be finite; got {value!r}")
    return float(value)


def write_dcic_output(
    path: PathIn,
    *,
    dataset_name: str,
    v_fold: int,
    classes: Sequence[str],
    paths: Sequence[str],
    soft_labels: ArrayIn,
    splits: Sequence[str] | None = None,
    budget: float | int = 0.0,
    weighted_budget: float | int = 0.0,
) -> None:
    """Write one fold's output file in the DCIC benchmark's format; parent folders are
    created.

    The file holds ``{"name", "v_fold", "classes", "budget", "weighted_budget",
    "images"}``, each image ``{"path", "split", "gt_verbose", "gt", "soft_gt", "info"}``
    with ``gt`` the argmax of ``soft_gt`` and ``gt_verbose`` its class name.

    Args:
        path: the output JSON file.
        dataset_name: keyword-only; the dataset's name, e.g. ``"CIFAR10H"``.
        v_fold: keyword-only; the validation fold, 1 to 5.
        classes: keyword-only; class names, one per column of ``soft_labels``.
        paths: keyword-only; image paths, one per row of ``soft_labels``, distinct.
        soft_labels: keyword-only; ``(images, classes)`` label distributions: finite,
            non-negative rows summing to 1 (within 1e-4).
        splits: keyword-only; each image's split (default ``"train"`` for all).
        budget: keyword-only; annotations spent.
        weighted_budget: keyword-only; annotations spent, weighted by cost.

    Raises:
        ValueError: on a ``v_fold`` outside 1 to 5, lengths that disagree, repeated paths,
            or a row of ``soft_labels`` that is not a probability vector (the message
            names the argument and the row).

    Examples:
        >>> import pathlib, tempfile, numpy as np, cleverjax as cj
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "CIFAR10H-1.json"
        ...     cj.write_dcic_output(path, dataset_name="CIFAR10H", v_fold=1,
        ...                          classes=["cat", "dog"], paths=["a.png", "b.png"],
        ...                          soft_labels=np.array([[0.75, 0.25], [0.0, 1.0]]))
        ...     out = cj.read_dcic_output(path)
        >>> out.paths, out.splits, out.soft_labels.tolist()
        (('a.png', 'b.png'), ('train', 'train'), [[0.75, 0.25], [0.0, 1.0]])
    """
    if not isinstance(dataset_name, str):
        raise TypeError(f"`dataset_name` must be a str; got {type(dataset_name).__name__}")
    fold = _check_v_fold(v_fold, "`v_fold`")
    class_names = _check_names("classes", classes)
    if not class_names:
        raise ValueError("`classes` must name at least one class; got an empty sequence")
    image_paths = _check_names("paths", paths)
    n, k = len(image_paths), len(class_names)
    split_names = ("train",) * n
    if splits is not None:
        if isinstance(splits, (str, bytes)) or not isinstance(splits, (Sequence, np.ndarray)):
            raise TypeError(f"`splits` must be a sequence of str; got {type(splits).__name__}")
        split_names = tuple(splits)
        if len(split_names) != n:
            raise ValueError(f"`splits` must have {n} entries, one per path; got {len(splits)}")
        for i, s in enumerate(split_names):
            if not isinstance(s, str):
                raise TypeError(f"`splits[{i}]` must be a str; got {type(s).__name__} {s!r}")
    p = np.asarray(soft_labels)
    if p.dtype == object or not (
        np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
    ):
        raise TypeError(f"`soft_labels` must hold real numbers; got dtype {p.dtype}")
    if p.shape != (n, k):
        raise ValueError(
            f"`soft_labels` must have shape ({n}, {k}), one row per path and one column per "
            f"class; got {p.shape}"
        )
    p = p.astype(np.float64)
    total = p.sum(axis=1)
    checks = (
        (~np.isfinite(p).all(axis=1), "is not finite"),
        ((p < 0).any(axis=1), "has a negative entry"),
        (np.abs(total - 1) > SIMPLEX_ATOL, f"does not sum to 1 (within {SIMPLEX_ATOL})"),
    )
    for bad, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"`soft_labels` row {i} (path {image_paths[i]!r}) {what}: {p[i].tolist()} sums "
                f"to {total[i]:.6g} ({int(bad.sum())} such rows)"
            )
    budget_f = _check_number(budget, "`budget`")
    weighted_f = _check_number(weighted_budget, "`weighted_budget`")
    gt = np.argmax(p, axis=1)
    images = [
        {
            "path": image_paths[i],
            "split": split_names[i],
            "gt_verbose": class_names[int(gt[i])],
            "gt": int(gt[i]),
            "soft_gt": p[i].tolist(),
            "info": {},
        }
        for i in range(n)
    ]
    doc = {
        "name": dataset_name,
        "v_fold": fold,
        "classes": list(class_names),
        "budget": budget_f,
        "weighted_budget": weighted_f,
        "images": images,
    }
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path (str or os.PathLike); got {type(path).__name__}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=False)


def read_dcic_output(path: PathIn) -> DCICOutput:
    """Read one fold's output file of the DCIC benchmark (see :func:`write_dcic_output`).

    Soft labels are returned as stored: rows must be finite and non-negative with a
    positive sum (the benchmark renormalises rows that do not sum to 1). An image whose
    ``soft_gt`` is empty (unknown) gets a row of NaN.

    Args:
        path: the JSON file.

    Returns:
        A :class:`DCICOutput`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not JSON, lacks a key, or holds a value of the wrong
            kind (the message names the file, the image and the key).

    Examples:
        >>> import pathlib, tempfile, numpy as np, cleverjax as cj
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "fold.json"
        ...     _ = path.write_text('{"name": "Pig", "v_fold": 2, "classes": ["a", "b"], '
        ...         '"budget": 0, "weighted_budget": 0, "images": [{"path": "x.png", '
        ...         '"split": "val", "soft_gt": [0.5, 0.5]}]}')
        ...     out = cj.read_dcic_output(path)
        >>> out.name, out.v_fold, out.classes, out.splits, out.soft_labels.tolist()
        ('Pig', 2, ('a', 'b'), ('val',), [[0.5, 0.5]])
    """
    doc, shown = _load_json(path, "read_dcic_output(path=...)")
    if not isinstance(doc, dict):
        raise ValueError(f"{shown}: expected a JSON object; got {_json_type(doc)}")
    for key in ("name", "v_fold", "classes", "budget", "weighted_budget", "images"):
        if key not in doc:
            raise ValueError(f"{shown}: missing key {key!r}; found keys: {', '.join(doc)}")
    if not isinstance(doc["name"], str):
        raise ValueError(f"{shown}: 'name' must be a string; got {_json_type(doc['name'])}")
    v_fold = _check_v_fold(doc["v_fold"], f"{shown}: 'v_fold'")
    classes = doc["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{shown}: 'classes' must be a non-empty list of strings; got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{shown}: 'classes' names a class twice: {classes!r}")
    budget = _check_number(doc["budget"], f"{shown}: 'budget'")
    weighted = _check_number(doc["weighted_budget"], f"{shown}: 'weighted_budget'")
    images = doc["images"]
    if not isinstance(images, list):
        raise ValueError(f"{shown}: 'images' must be a list; got {_json_type(images)}")
    k = len(classes)
    paths: list[str] = []
    splits: list[str] = []
    soft = np.full((len(images), k), np.nan)
    first_of: dict[str, int] = {}
    for i, image in enumerate(images):
        at = f"{shown}: image {i}"
        if not isinstance(image, dict):
            raise ValueError(f"{at}: expected an object; got {_json_type(image)}")
        for key in ("path", "split", "soft_gt"):
            if key not in image:
                raise ValueError(f"{at}: missing key {key!r}")
        for key in ("path", "split"):
            if not isinstance(image[key], str):
                raise ValueError(f"{at}: {key!r} must be a string; got {_json_type(image[key])}")
        if image["path"] in first_of:
            raise ValueError(
                f"{at}: path {image['path']!r} repeats image {first_of[image['path']]}"
            )
        first_of[image["path"]] = i
        row = image["soft_gt"]
        if not isinstance(row, list) or len(row) not in (0, k):
            size = len(row) if isinstance(row, list) else _json_type(row)
            raise ValueError(
                f"{at}, key 'soft_gt': expected a list of {k} numbers (one per class) or an "
                f"empty list; got {size}"
            )
        if row:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
                raise ValueError(f"{at}, key 'soft_gt': expected numbers; got {row!r}")
            r = np.asarray(row, dtype=np.float64)
            if not np.isfinite(r).all() or (r < 0).any() or not r.sum() > 0:
                raise ValueError(
                    f"{at}, key 'soft_gt': expected finite, non-negative numbers with a "
                    f"positive sum; got {row!r}"
                )
            soft[i] = r
        paths.append(image["path"])
        splits.append(image["split"])
    return DCICOutput(
        name=doc["name"],
        v_fold=v_fold,
        classes=tuple(classes),
        paths=tuple(paths),
        splits=tuple(splits),
        soft_labels=soft,
        budget=budget,
        weighted_budget=weighted,
    )
