"""Validation and encoding of a long table, as a pipeline of named passes.

Each pass looks at the rows that earlier passes left alone and records the first problem
of a row in :class:`Problems`, so a row is reported once, for the first check it fails:

1. :func:`parse_columns` normalises the cells of each column;
2. :func:`reject_missing` rejects rows without a task, worker or label;
3. :func:`choose_classes` decides between class names and class indices and fixes the
   classes (:func:`kind_votes`, :func:`class_kind`, :func:`default_classes`);
4. :func:`reject_unknown_classes` maps labels and proposals to class indices;
5. :func:`reject_conflicting_proposals` keeps one proposal per task;
6. :func:`reject_duplicates` rejects exact repeats of an earlier row;
7. :func:`assemble` reports the rejected rows and builds the :class:`AnnotationTable`.

The out-of-core reader (:mod:`cleverjax.io.stream`) runs passes 1 to 4 on each batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .cells import INT_RE, CodedText, Values, known, values
from .types import AnnotationTable


class Frame(NamedTuple):
    """A table to validate, with what is needed to say where a problem lies."""

    columns: dict[str, Any]  # canonical column name -> values (None if absent)
    n: int
    rows: np.ndarray  # int64: the number reported for each row
    source: str
    where: Callable[[int], str]  # position -> "row 7" or "set 3, annotation 17"
    names: dict[str, str]  # canonical column name -> its name in the source
    field: str  # "column" or "key"


class Columns(NamedTuple):
    """The four columns of a frame, parsed."""

    task: Values
    worker: Values
    label: Values
    prop: Values
    has_prop: np.ndarray  # bool: a proposal was shown (not missing and not -1)


class ClassScheme(NamedTuple):
    """How labels map to class indices."""

    classes: tuple[str, ...]
    int_kind: bool  # most labels are integers
    by_name: bool  # every label is matched by name (no mixed-type check)
    by_index: bool  # integers index the given classes
    table: dict[str, int]  # label text -> class index


class Votes(NamedTuple):
    """What decides whether labels are class names or class indices."""

    num_int: int  # integer labels and proposals
    num_all: int  # labels and proposals
    first_is_int: bool | None  # the first label's kind, for a tie (None: no label yet)

    def __add__(self, other: Votes) -> Votes:  # type: ignore[override]
        first = self.first_is_int if self.first_is_int is not None else other.first_is_int
        return Votes(self.num_int + other.num_int, self.num_all + other.num_all, first)


class Problems:
    """The first problem of each row, in the order the checks run."""

    def __init__(self, n: int):
        self.bad = np.zeros(n, bool)
        # Text per row, allocated at the first problem (most batches of a file have none).
        self.column = self.value = self.reason = np.zeros(0, dtype=object)

    def add(self, mask: np.ndarray, column: str, value: Any, reason: Callable[[int], str]) -> None:
        """Record ``column``, ``value[i]`` (text per row) and ``reason(i)`` for the rows
        of ``mask`` that have no problem yet."""
        new = np.flatnonzero(mask & ~self.bad)
        if not new.size:
            return
        if not self.column.size:
            n = self.bad.shape[0]
            self.column, self.value, self.reason = (np.full(n, "", dtype=object) for _ in "cvr")
        self.bad[new] = True
        self.column[new] = column
        self.value[new] = value[new]
        self.reason[new] = [reason(int(i)) for i in new]

    def frame(self, rows: np.ndarray) -> pd.DataFrame:
        """The rejected rows as the ``rejected`` table."""
        bad = np.flatnonzero(self.bad)
        return pd.DataFrame(
            {
                "row": rows[bad].astype(np.int64),
                "column": self.column[bad].astype(str),
                "value": self.value[bad].astype(str),
                "reason": self.reason[bad].astype(str),
            }
        )


def message(frame: Frame, problems: Problems, pos: int) -> str:
    """The error message of the row at ``pos``: file, row, column(s), reason."""
    parts = problems.column[pos].split(",")
    if len(parts) == 1:
        phrase = f"{frame.field} {parts[0]!r}"
    else:
        phrase = f"{frame.field}s " + ", ".join(repr(p) for p in parts)
    return f"{frame.source}, {frame.where(pos)}, {phrase}: {problems.reason[pos]}"


# ----------------------------------------------------------------------------------
# Passes
# ----------------------------------------------------------------------------------


def parse_columns(frame: Frame) -> Columns:
    """Pass 1: parse each column's cells."""
    prop = values(frame.columns.get("proposal"), frame.n)
    return Columns(
        task=values(frame.columns["task"], frame.n),
        worker=values(frame.columns["worker"], frame.n),
        label=values(frame.columns["label"], frame.n),
        prop=prop,
        has_prop=~(prop.missing | (prop.is_int & (prop.value == -1))),
    )


def reject_missing(frame: Frame, cols: Columns, problems: Problems) -> None:
    """Pass 2: a row needs a task, a worker and a label."""
    for col, vals in (("task", cols.task), ("worker", cols.worker), ("label", cols.label)):
        problems.add(vals.missing, frame.names[col], vals.text, lambda i: "missing value")


def kind_votes(cols: Columns, ok: np.ndarray) -> Votes:
    """Integer labels and proposals among the rows ``ok``."""
    ok_prop = ok & cols.has_prop
    first = bool(cols.label.is_int[int(np.argmax(ok))]) if ok.any() else None
    return Votes(
        int(cols.label.is_int[ok].sum() + cols.prop.is_int[ok_prop].sum()),
        int(ok.sum() + ok_prop.sum()),
        first,
    )


def class_kind(votes: Votes) -> bool:
    """Whether labels are class indices: most of them are integers; a tie goes by the
    first label."""
    if votes.num_int * 2 != votes.num_all:
        return votes.num_int * 2 > votes.num_all
    return bool(votes.first_is_int)


def class_texts(vals: Values, mask: np.ndarray) -> set[tuple[str, bool, int]]:
    """The distinct (text, is_int, value) of ``vals`` among the rows ``mask``."""
    frame = pd.DataFrame({"t": vals.text[mask], "i": vals.is_int[mask], "v": vals.value[mask]})
    return set(frame.drop_duplicates().itertuples(index=False, name=None))


def default_classes(
    seen: Iterable[tuple[str, bool, int]], int_kind: bool, *, names_only: bool = False
) -> tuple[str, ...]:
    """The classes found in the data: integers (class indices, >= 0) sorted numerically,
    names sorted as text; with ``names_only``, every label sorted as text."""
    if names_only:
        return tuple(sorted({t for t, _, _ in seen}))
    texts = {t for t, is_int, v in seen if is_int == int_kind and not (is_int and v < 0)}
    return tuple(sorted(texts, key=int) if int_kind else sorted(texts))


def scheme(
    classes: tuple[str, ...], given: bool, int_kind: bool, *, names_only: bool = False
) -> ClassScheme:
    """How labels map to ``classes``."""
    by_name = names_only or (given and any(INT_RE.fullmatch(c) for c in classes))
    by_index = given and int_kind and not by_name
    if by_index:
        table = {str(i): i for i in range(len(classes))}
    else:
        table = {c: i for i, c in enumerate(classes)}
    return ClassScheme(classes, int_kind and not by_name, by_name, by_index, table)


def choose_classes(
    cols: Columns, problems: Problems, classes: tuple[str, ...] | None, *, names_only: bool
) -> ClassScheme:
    """Pass 3: class names or class indices, and the classes."""
    ok = ~problems.bad
    given = classes is not None
    if given and (names_only or any(INT_RE.fullmatch(c) for c in classes)):
        return scheme(classes, True, False, names_only=True)
    int_kind = class_kind(kind_votes(cols, ok))
    if classes is None:
        ok_prop = ok & cols.has_prop
        seen = class_texts(cols.label, ok) | class_texts(cols.prop, ok_prop)
        classes = default_classes(seen, int_kind, names_only=names_only)
    return scheme(classes, given, int_kind, names_only=names_only)


def _lookup(vals: Values, mask: np.ndarray, table: dict[str, int]) -> np.ndarray:
    """Class index of each row's text under ``table`` (-1 if absent or outside ``mask``)."""
    out = np.full(vals.missing.shape[0], -1, np.int64)
    if not mask.any():
        return out
    if isinstance(vals.text, CodedText):  # look up each distinct value once
        found = np.array([table.get(u, -1) for u in vals.text.uniques], dtype=np.int64)
        out[mask] = found[vals.text.codes[mask]]
        return out
    codes, uniques = pd.factorize(vals.text[mask])
    found = np.array([table.get(u, -1) for u in uniques], dtype=np.int64)
    out[mask] = found[codes]
    return out


def reject_unknown_classes(
    frame: Frame, cols: Columns, problems: Problems, sch: ClassScheme
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 4: labels and proposals of the other kind, or not among the classes.

    Returns the class index of each row's label and proposal (-1 where none)."""
    ok = ~problems.bad
    ok_prop = ok & cols.has_prop
    if sch.by_name:
        odd_label = odd_prop = np.zeros(frame.n, bool)
    else:
        odd_label = ok & (cols.label.is_int != sch.int_kind)
        odd_prop = ok_prop & (cols.prop.is_int != sch.int_kind)
    label_idx = _lookup(cols.label, ok & ~odd_label, sch.table)
    prop_idx = _lookup(cols.prop, ok_prop & ~odd_prop, sch.table)
    for vals, column, odd, idx, usable in (
        (cols.label, "label", odd_label, label_idx, ok),
        (cols.prop, "proposal", odd_prop, prop_idx, ok_prop),
    ):
        name = frame.names[column]
        problems.add(odd, name, vals.text, _mixed(frame, sch, vals, usable & ~odd))
        problems.add(usable & (idx < 0), name, vals.text, _unknown(sch, vals))
    return label_idx, prop_idx


def _mixed(frame: Frame, sch: ClassScheme, vals: Values, usual: np.ndarray) -> Callable[[int], str]:
    example = np.flatnonzero(usual)
    ex = ""
    if example.size:
        ex = f" (e.g. {frame.where(int(example[0]))}: {vals.text[example[0]]!r})"
    kind = "integers" if sch.int_kind else "class names"

    def reason(i: int) -> str:
        this = "an integer" if vals.is_int[i] else "a class name"
        return (
            f"mixed-type labels: {vals.text[i]!r} is {this} but most labels are "
            f"{kind}{ex}; use class names or class indices throughout"
        )

    return reason


def _unknown(sch: ClassScheme, vals: Values) -> Callable[[int], str]:
    def reason(i: int) -> str:
        t = vals.text[i]
        if sch.int_kind and vals.value[i] < 0:
            return f"negative class index {t}; class indices must be >= 0"
        if sch.by_index:
            return (
                f"class index {t} is out of range for {len(sch.classes)} classes "
                f"({known(sch.classes)})"
            )
        return f"{t!r} is not a known class; known: {known(sch.classes)}"

    return reason


def reject_conflicting_proposals(
    frame: Frame, cols: Columns, problems: Problems, prop_idx: np.ndarray, classes: tuple[str, ...]
) -> None:
    """Pass 5: a later row showing its task another class than the first row with a
    proposal conflicts with it (SPA assumes one proposal per task)."""
    shown = np.flatnonzero(~problems.bad & cols.has_prop)
    if not shown.size:
        return
    first_pos = pd.Series(shown).groupby(cols.task.text[shown], sort=False).transform("first")
    first_of = np.zeros(frame.n, np.int64)
    first_of[shown] = first_pos.to_numpy()
    conflict = np.zeros(frame.n, bool)
    conflict[shown] = prop_idx[shown] != prop_idx[first_of[shown]]

    def reason(i: int) -> str:
        j = int(first_of[i])
        return (
            f"task {cols.task.text[i]!r} is shown proposal {classes[prop_idx[i]]!r} here but "
            f"{classes[prop_idx[j]]!r} in {frame.where(j)}; SPA assumes one proposal per task"
        )

    problems.add(conflict, frame.names["proposal"], cols.prop.text, reason)


def reject_duplicates(
    frame: Frame, cols: Columns, problems: Problems, label_idx: np.ndarray, prop_idx: np.ndarray
) -> None:
    """Pass 6: a row with the task, worker, label and proposal of an earlier row."""
    keep = np.flatnonzero(~problems.bad)
    if not keep.size:
        return
    key = pd.DataFrame(
        {
            "t": cols.task.text[keep],
            "w": cols.worker.text[keep],
            "l": label_idx[keep],
            "p": np.where(cols.has_prop[keep], prop_idx[keep], -1),
        }
    )
    dup_at = key.duplicated(keep="first").to_numpy()
    if not dup_at.any():
        return
    first_pos = key.assign(pos=keep).groupby(["t", "w", "l", "p"], sort=False)["pos"]
    first_of = np.zeros(frame.n, np.int64)
    first_of[keep] = first_pos.transform("first").to_numpy()
    dup = np.zeros(frame.n, bool)
    dup[keep[dup_at]] = True
    name = frame.names
    columns = [name["task"], name["worker"], name["label"]]
    texts = [cols.task.text, cols.worker.text, cols.label.text]
    if frame.columns.get("proposal") is not None:
        columns.append(name["proposal"])
        texts.append(cols.prop.text)
    row_text = np.full(frame.n, "", dtype=object)
    row_text[dup] = [",".join(t[i] for t in texts) for i in np.flatnonzero(dup)]
    problems.add(
        dup,
        ",".join(columns),
        row_text,
        lambda i: f"exact duplicate of {frame.where(int(first_of[i]))}",
    )


def assemble(
    frame: Frame,
    cols: Columns,
    problems: Problems,
    by_design: np.ndarray,
    label_idx: np.ndarray,
    prop_idx: np.ndarray,
    sch: ClassScheme,
    on_error: str,
) -> tuple[AnnotationTable, int, str]:
    """Pass 7: raise or report the rejected rows; encode the used ones."""
    counted = problems.bad & ~by_design
    num_rejected = int(counted.sum())
    first_message = ""
    if num_rejected:
        first_message = message(frame, problems, int(np.argmax(counted)))
        if on_error == "raise":
            raise ValueError(first_message)
    used = ~problems.bad
    if not used.any():
        if num_rejected:
            raise ValueError(
                f"{frame.source}: all {frame.n} rows were rejected; first: {first_message}"
            )
        raise ValueError(f"{frame.source}: no annotations (every row was skipped)")
    task_idx, task_names = pd.factorize(cols.task.text[used])
    worker_idx, worker_names = pd.factorize(cols.worker.text[used])
    table = AnnotationTable(
        task=task_idx.astype(np.int32),
        worker=worker_idx.astype(np.int32),
        label=label_idx[used].astype(np.int32),
        proposal=np.where(cols.has_prop[used], prop_idx[used], -1).astype(np.int32),
        tasks=tuple(str(t) for t in task_names),
        workers=tuple(str(w) for w in worker_names),
        classes=tuple(sch.classes),
        rejected=problems.frame(frame.rows),
        source=frame.source,
    )
    return table, num_rejected, first_message


def encode(
    frame: Frame,
    classes: tuple[str, ...] | None,
    on_error: str,
    *,
    check_duplicates: bool = True,
    names_only: bool = False,
    skipped: tuple[np.ndarray, str, str] | None = None,
) -> tuple[AnnotationTable, int, str]:
    """Validate and encode a frame; return the table, the number of rejected rows (not
    counting ``skipped``, rows left out by design) and the first problem's message.

    With ``names_only``, labels are class names whatever they look like, and the default
    classes are sorted as text (the DCIC benchmark's rule)."""
    cols = parse_columns(frame)
    problems = Problems(frame.n)
    if skipped is not None:
        mask, column, reason = skipped
        problems.add(mask, frame.names[column], cols.label.text, lambda i: reason)
    by_design = problems.bad.copy()
    reject_missing(frame, cols, problems)
    sch = choose_classes(cols, problems, classes, names_only=names_only)
    label_idx, prop_idx = reject_unknown_classes(frame, cols, problems, sch)
    reject_conflicting_proposals(frame, cols, problems, prop_idx, sch.classes)
    if check_duplicates:
        reject_duplicates(frame, cols, problems, label_idx, prop_idx)
    return assemble(frame, cols, problems, by_design, label_idx, prop_idx, sch, on_error)
