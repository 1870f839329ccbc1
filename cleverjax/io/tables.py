"""Long annotation tables: reading CSV, Parquet and DataFrames; writing CSV and Parquet."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._checks import as_path, check_choice, existing_file
from .encode import Frame, encode
from .types import AnnotationTable

OnError = Literal["raise", "skip"]
"""What :func:`read_annotations` does with a bad row: ``"raise"`` a ``ValueError`` for the
first one (default), or ``"skip"`` it, list it in ``rejected`` and warn."""

PathIn = str | os.PathLike
"""A file path: a ``str`` or a :class:`os.PathLike` such as :class:`pathlib.Path`."""

ON_ERROR = ("raise", "skip")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
COLUMNS = ("task", "worker", "label")
DATAFRAME = "<DataFrame>"
RARE_CLASS_ANNOTATIONS = 2
"""A class found in the data (``classes`` not given) that is never proposed and chosen
in at most this many annotations, and at most one in :data:`RARE_CLASS_SHARE`, is
reported as a likely typo (see :func:`rare_class_note`)."""

RARE_CLASS_SHARE = 1000


def file_kind(path: PathIn, what: str) -> tuple[Path, str]:
    """The path and its format, ``"csv"`` or ``"parquet"``, from the suffix."""
    p = as_path(what, path)
    suffix = p.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return p, "csv"
    if suffix in PARQUET_SUFFIXES:
        return p, "parquet"
    raise ValueError(
        f"{path}: cannot tell the file format from the suffix {suffix or '(none)'!r} "
        f"(`{what}`); use one of {', '.join(CSV_SUFFIXES + PARQUET_SUFFIXES)}"
    )


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
    for col in (*COLUMNS, "proposal"):
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


def _table_frame(df: pd.DataFrame, rows: np.ndarray, shown: str) -> Frame:
    columns = [str(c) for c in df.columns]
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        found = ", ".join(repr(c) for c in columns) or "none"
        raise ValueError(
            f"{shown}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
            f"found columns: {found}"
        )
    for col in (*COLUMNS, "proposal"):
        if columns.count(col) > 1:
            raise ValueError(f"{shown}: column {col!r} appears {columns.count(col)} times")
    if len(df) == 0:
        raise ValueError(f"{shown}: no annotations (no data rows)")
    index = {c: i for i, c in enumerate(columns)}
    data = {c: (df.iloc[:, index[c]] if c in index else None) for c in (*COLUMNS, "proposal")}
    return Frame(
        columns=data,
        n=len(df),
        rows=rows,
        source=shown,
        where=lambda i: f"row {rows[i]}",
        names={c: c for c in (*COLUMNS, "proposal")},
        field="column",
    )


def check_names(name: str, names: Any, size: int | None = None) -> tuple[str, ...]:
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


def finish(frame: Frame, classes: Any, on_error: str, **kwargs: Any) -> AnnotationTable:
    """Check ``classes``, run the encoding passes and warn about rejected rows."""
    check_choice("on_error", on_error, ON_ERROR)
    names = None
    if classes is not None:
        names = check_names("classes", classes)
        if not names:
            raise ValueError("`classes` must name at least one class; got an empty sequence")
    table, num_rejected, first = encode(frame, names, on_error, **kwargs)
    if num_rejected:
        warnings.warn(
            f"{frame.source}: rejected {num_rejected} of {frame.n} rows (listed in "
            f"`.rejected`); first: {first}",
            UserWarning,
            stacklevel=3,
        )
    if names is None:
        k = len(table.classes)
        shown = table.proposal[table.proposal >= 0]
        warn_rare_classes(
            table.source,
            table.classes,
            np.bincount(table.label, minlength=k),
            np.bincount(shown, minlength=k) > 0,
            stacklevel=3,
        )
    return table


def warn_rare_classes(
    source: str, classes, chosen: np.ndarray, proposed: np.ndarray, *, stacklevel: int
) -> None:
    """Warn (:func:`rare_class_note`) about classes found in the data that look like
    typos; ``stacklevel`` as the caller would give it to ``warnings.warn``."""
    note = rare_class_note(source, classes, chosen, proposed)
    if note:
        warnings.warn(note, UserWarning, stacklevel=stacklevel + 1)


def rare_class_note(source: str, classes, chosen: np.ndarray, proposed: np.ndarray) -> str | None:
    """A note on the classes that look like typos, or ``None``. ``chosen``: annotations
    per class; ``proposed``: whether each class was ever shown as a proposal. In a table
    with proposals, a class that is never proposed and chosen in at most
    :data:`RARE_CLASS_ANNOTATIONS` annotations and at most one in
    :data:`RARE_CLASS_SHARE` is reported (a small hand-made table is not). Each class
    found in the data becomes a column of every image's label distribution, so a
    misspelt label would take a share of every image's probability."""
    if not np.any(proposed):
        return None  # no proposals at all: nothing to tell a rare class by
    total = int(np.sum(chosen, dtype=np.int64))
    few = (chosen <= RARE_CLASS_ANNOTATIONS) & (chosen * RARE_CLASS_SHARE <= total)
    rare = np.flatnonzero(~np.asarray(proposed, bool) & few)
    if not len(rare):
        return None
    listed = ", ".join(
        f"{classes[i]!r} ({chosen[i]} annotation{'s' if chosen[i] != 1 else ''})" for i in rare[:5]
    )
    more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
    which = "class" if len(rare) == 1 else "classes"
    are = "is" if len(rare) == 1 else "are"
    return (
        f"{source}: {which} {listed}{more} {are} never proposed and chosen by almost "
        f"no annotator, yet each class becomes a column of every image's labels: a typo? "
        f"Give the class list (`classes`, or --classes on the command line) to make an "
        f"unknown label a bad row instead"
    )


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
    such as ``"01"`` are kept as written; an empty cell is a missing value. For a
    Parquet table too large for memory, :func:`read_counts` gives the counts directly.

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
        UserWarning: with ``on_error="skip"``, when rows were rejected; without
            ``classes``, when a class looks like a typo (never proposed, chosen in one or
            two annotations of a large table: see :func:`rare_class_note`).

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
    check_choice("on_error", on_error, ON_ERROR)
    if isinstance(source, pd.DataFrame):
        frame = _table_frame(source, np.arange(len(source), dtype=np.int64), DATAFRAME)
    elif isinstance(source, (str, os.PathLike)):
        p, kind = file_kind(source, "read_annotations(source=...)")
        shown = str(source)
        existing_file(p, shown)
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
    return finish(frame, classes, on_error)


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
    p, kind = file_kind(path, "write_table(path=...)")
    p.parent.mkdir(parents=True, exist_ok=True)
    if kind == "csv":
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)
