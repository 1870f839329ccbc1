"""Out-of-core counts: a Parquet file or folder read batch by batch, straight to counts.

:func:`read_counts` applies the rules of :func:`~cleverjax.io.read_annotations` and
:func:`~cleverjax.io.to_counts` without holding the long table.

A table with no bad row (the usual case at scale) is counted in one read by
:func:`~cleverjax.io.clean_counts.clean_counts`, which gives up at the first row the
checks would reject. Otherwise the exact reader below keeps per-task state (counts, the
proposal shown, where the task was first used) and 8 bytes per used row for the
exact-duplicate check, and reads the data twice:

1. :func:`_survey` decides between class names and class indices and finds the classes
   (as :func:`~cleverjax.io.encode.choose_classes` does for the whole table), and names
   every task and worker;
2. :func:`_check` runs the per-row passes of :mod:`~cleverjax.io.encode` on each batch
   and rejects proposals that conflict with a task's first one; :func:`_add_counts` adds
   the rest to the counts; :func:`_remove_duplicates` then sorts the row keys and, only
   if two are equal, reads the data once more to find and remove the later rows.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from .._checks import as_path, check_choice, existing_path, positive_int
from .cells import INT_RE, Values, parse_uniques, take
from .clean_counts import _parse_dictionary, clean_counts
from .encode import (
    ClassScheme,
    Columns,
    Frame,
    Problems,
    Votes,
    class_kind,
    default_classes,
    kind_votes,
    message,
    reject_missing,
    reject_unknown_classes,
    scheme,
)
from .tables import (
    COLUMNS,
    CSV_SUFFIXES,
    ON_ERROR,
    PARQUET_SUFFIXES,
    OnError,
    PathIn,
    check_names,
    warn_rare_classes,
)
from .types import Counts

_ALL_COLUMNS = (*COLUMNS, "proposal")
_NAMES = {c: c for c in _ALL_COLUMNS}
_UNSET = np.iinfo(np.int64).max
_REJECTED_COLUMNS = ["row", "column", "value", "reason", "file"]


class CountedTable(NamedTuple):
    """Counts read straight from a long table (see :func:`read_counts`).

    Attributes:
        counts: the per-task :class:`Counts`, as ``to_counts(read_annotations(...))``.
        rejected: the rows that were not used, one per row, with columns ``row`` (the
            row's 0-based position in its file), ``column``, ``value``, ``reason`` and
            ``file``.
        num_rows_read: rows read from all files: annotations used plus rows rejected.
        source: the path read.
    """

    counts: Counts
    rejected: pd.DataFrame
    num_rows_read: int
    source: str

    @property
    def num_annotations(self) -> int:
        """Number of annotations used (counted)."""
        return int(
            self.counts.biased.sum(dtype=np.int64) + self.counts.unbiased.sum(dtype=np.int64)
        )


class _Batch(NamedTuple):
    """One batch of rows, parsed: codes into per-batch uniques, and the uniques."""

    file: str
    start: int  # row of the batch's first row in its file
    offset: int  # position of the batch's first row over all files
    n: int
    has_proposal: bool  # the file has a proposal column
    codes: dict[str, np.ndarray]  # column -> int64 code per row (-1: missing)
    uniques: dict[str, Values]  # column -> parsed uniques (last entry: missing)

    def columns(self) -> Columns:
        task, worker, label, prop = (take(self.uniques[c], self.codes[c]) for c in _ALL_COLUMNS)
        has_prop = ~(prop.missing | (prop.is_int & (prop.value == -1)))
        return Columns(task, worker, label, prop, has_prop)

    def frame(self) -> Frame:
        rows = np.arange(self.start, self.start + self.n, dtype=np.int64)
        return Frame({}, self.n, rows, self.file, lambda i: f"row {rows[i]}", _NAMES, "column")


class _Source(NamedTuple):
    """The files to read, in order, and where each starts."""

    files: tuple[tuple[str, Any], ...]  # (shown path, pyarrow fragment) in reading order
    starts: np.ndarray  # int64: position of each file's first row over all files
    num_rows: int
    shown: str

    def locate(self, position: int, here: str) -> str:
        """Where the row at ``position`` lies, said from a row of the file ``here``."""
        i = int(np.searchsorted(self.starts, position, side="right")) - 1
        file, row = self.files[i][0], position - int(self.starts[i])
        return f"row {row}" if file == here else f"{file}, row {row}"


# ----------------------------------------------------------------------------------
# Reading batches
# ----------------------------------------------------------------------------------


def _open(source: PathIn) -> _Source:
    p = as_path("read_counts(source=...)", source)
    shown = str(source)
    existing_path(p, shown)
    if p.is_file() and p.suffix.lower() in CSV_SUFFIXES:
        raise ValueError(
            f"{shown}: read_counts streams Parquet only (a CSV file has no row groups to read "
            f"in batches); convert it once, e.g. with pyarrow.csv.open_csv and "
            f"pyarrow.parquet.ParquetWriter, or read it in memory with read_annotations and "
            f"to_counts"
        )
    if p.is_file() and p.suffix.lower() not in PARQUET_SUFFIXES:
        raise ValueError(
            f"{shown}: cannot tell the file format from the suffix {p.suffix or '(none)'!r} "
            f"(`read_counts(source=...)`); use {', '.join(PARQUET_SUFFIXES)} or a folder of "
            f"such files"
        )
    try:
        # Text columns come as dictionaries where the file stores them so (no rehashing).
        options = ds.ParquetReadOptions(dictionary_columns=list(_ALL_COLUMNS))
        dataset = ds.dataset(
            p,
            format=ds.ParquetFileFormat(read_options=options),
            exclude_invalid_files=False,
            ignore_prefixes=[".", "_"],
        )
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    except (pa.ArrowInvalid, OSError) as e:
        raise ValueError(f"{shown}: cannot be read as Parquet: {e}") from e
    files = tuple(
        (f.path if p.is_dir() else shown, f)
        for f in fragments
        if p.is_file() or os.path.splitext(f.path)[1].lower() in PARQUET_SUFFIXES
    )
    if not files:
        raise ValueError(f"{shown}: no Parquet files ({', '.join(PARQUET_SUFFIXES)}) found")
    sizes = []
    for file, fragment in files:
        try:
            names = fragment.physical_schema.names
            sizes.append(fragment.count_rows())
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{file}: cannot be read as Parquet: {e}") from e
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            found = ", ".join(repr(c) for c in names) or "none"
            raise ValueError(
                f"{file}: missing required column(s) {', '.join(repr(c) for c in missing)}; "
                f"found columns: {found}"
            )
        for col in _ALL_COLUMNS:
            if names.count(col) > 1:
                raise ValueError(f"{file}: column {col!r} appears {names.count(col)} times")
    num_rows = int(sum(sizes))
    if num_rows == 0:
        raise ValueError(f"{shown}: no annotations (no data rows)")
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    return _Source(files, starts, num_rows, shown)


def _codes(array: Any) -> tuple[np.ndarray, Values]:
    """Per-row codes into the batch's distinct values, and those values parsed."""
    if not pa.types.is_dictionary(array.type):
        array = pc.dictionary_encode(array)
    codes = array.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, _parse_dictionary(array.dictionary)


def _record_batches(src: _Source, batch_size: int) -> Iterator[Any]:
    """The record batches of every file, in order, as stored (text as dictionaries)."""
    for file, fragment in src.files:
        names = fragment.physical_schema.names
        columns = [c for c in _ALL_COLUMNS if c in names]
        try:
            # Arrow decodes the next batches on its threads while this one is counted; a
            # short read-ahead keeps that overlap without holding many decoded batches.
            yield from fragment.to_batches(
                columns=columns, batch_size=batch_size, use_threads=True, batch_readahead=2
            )
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{file}: cannot be read as Parquet: {e}") from e


def _batches(src: _Source, batch_size: int) -> Iterator[_Batch]:
    offset = 0
    for file, fragment in src.files:
        names = fragment.physical_schema.names
        columns = [c for c in _ALL_COLUMNS if c in names]
        start = 0
        try:
            for rb in fragment.to_batches(columns=columns, batch_size=batch_size):
                if rb.num_rows == 0:
                    continue
                codes, uniques = {}, {}
                for c in _ALL_COLUMNS:
                    if c in columns:
                        codes[c], uniques[c] = _codes(rb.column(c))
                    else:
                        codes[c] = np.full(rb.num_rows, -1, np.int64)
                        uniques[c] = parse_uniques([])
                yield _Batch(
                    file, start, offset, rb.num_rows, "proposal" in columns, codes, uniques
                )
                start += rb.num_rows
                offset += rb.num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise ValueError(f"{file}: cannot be read as Parquet: {e}") from e


# ----------------------------------------------------------------------------------
# Pass 1: classes, tasks and workers
# ----------------------------------------------------------------------------------


class _Survey(NamedTuple):
    scheme: ClassScheme
    tasks: list[str]  # task names by id
    num_workers: int
    # Per batch (the same batches in every read): the task and worker id of each of the
    # batch's distinct values, -1 where unused; so later reads need no name lookups.
    task_ids: list[np.ndarray]
    worker_ids: list[np.ndarray]


def _present(b: _Batch, column: str, mask: np.ndarray) -> np.ndarray:
    """Which distinct values of ``column`` occur among the rows ``mask``."""
    codes = b.codes[column]
    size = len(b.uniques[column].text) - 1
    return np.bincount(codes[mask & (codes >= 0)], minlength=size)[:size] > 0


def _ids(names: dict[str, int], b: _Batch, column: str, mask: np.ndarray) -> np.ndarray:
    """The id of each distinct value of ``column`` among the rows ``mask`` (else -1); new
    names get the next ids."""
    text = b.uniques[column].text
    ids = np.full(len(text), -1, np.int64)
    where = np.flatnonzero(_present(b, column, mask))
    ids[where] = [names.setdefault(t, len(names)) for t in text[where]]
    return ids.astype(np.int32) if len(names) < 2**31 else ids  # kept for every batch


def _not_missing(b: _Batch, cols: Columns) -> np.ndarray:
    problems = Problems(b.n)
    reject_missing(b.frame(), cols, problems)
    return ~problems.bad


def _survey(src: _Source, classes: tuple[str, ...] | None, batch_size: int) -> _Survey:
    """Pass 1: the votes and distinct labels that fix the classes; task and worker ids."""
    votes = Votes(0, 0, None)
    seen: set[tuple[str, bool, int]] = set()
    tasks: dict[str, int] = {}
    workers: dict[str, int] = {}
    task_ids: list[np.ndarray] = []
    worker_ids: list[np.ndarray] = []
    for b in _batches(src, batch_size):
        cols = b.columns()
        ok = _not_missing(b, cols)
        votes = votes + kind_votes(cols, ok)
        for column, mask in (("label", ok), ("proposal", ok & cols.has_prop)):
            u = b.uniques[column]
            for i in np.flatnonzero(_present(b, column, mask)):
                seen.add((u.text[i], bool(u.is_int[i]), int(u.value[i])))
        task_ids.append(_ids(tasks, b, "task", ok))
        worker_ids.append(_ids(workers, b, "worker", ok))
    given = classes is not None
    if given and any(INT_RE.fullmatch(c) for c in classes):
        sch = scheme(classes, True, False, names_only=True)
    else:
        int_kind = class_kind(votes)
        if classes is None:
            classes = default_classes(seen, int_kind)
        sch = scheme(classes, given, int_kind)
    return _Survey(sch, list(tasks), len(workers), task_ids, worker_ids)


# ----------------------------------------------------------------------------------
# Pass 2: counts
# ----------------------------------------------------------------------------------


class _State:
    """Per-task accumulators, indexed by the survey's task ids, and the row keys."""

    def __init__(self, num_tasks: int, num_classes: int, num_workers: int, num_rows: int):
        self.biased = np.zeros((num_tasks, num_classes), np.int32)
        self.unbiased = np.zeros((num_tasks, num_classes), np.int32)
        self.first_prop = np.full(num_tasks, -1, np.int64)  # the class first shown
        self.first_prop_at = np.zeros(num_tasks, np.int64)  # position of that row
        self.first_used = np.full(num_tasks, _UNSET, np.int64)  # first used position
        # A row's key for the duplicate check: task, worker, label and whether a proposal
        # was shown (which proposal is then the task's one proposal).
        self.shifts = tuple(
            np.uint64(max(1, v.bit_length())) for v in (num_workers, num_classes, 1)
        )
        if max(1, num_tasks.bit_length()) + sum(int(s) for s in self.shifts) > 63:
            raise ValueError(
                f"too many tasks ({num_tasks}) and workers ({num_workers}) for the duplicate "
                f"check's 63-bit row keys; split the table by task"
            )
        self.keys = np.empty(num_rows, np.uint64)
        self.num_keys = 0

    def key(self, *parts: np.ndarray) -> np.ndarray:
        k = parts[0].astype(np.uint64)
        for shift, part in zip(self.shifts, parts[1:]):
            k = (k << shift) | part.astype(np.uint64)
        return k


class _Checked(NamedTuple):
    """A batch after the per-row checks."""

    problems: Problems
    task_ids: np.ndarray  # id of each distinct task of the batch (-1: not used)
    task: np.ndarray  # per row: task id, worker id, label and proposal indices
    worker: np.ndarray
    label: np.ndarray
    shown: np.ndarray  # bool: a proposal was shown
    first_of: np.ndarray  # int64: for a conflicting row, the position of the task's first


def _check(src: _Source, i: int, b: _Batch, sv: _Survey, st: _State, *, update: bool) -> _Checked:
    """The per-row checks of a batch; with ``update``, record each task's first proposal."""
    frame = b.frame()
    cols = b.columns()
    problems = Problems(b.n)
    reject_missing(frame, cols, problems)
    task_ids = sv.task_ids[i]
    task = task_ids[b.codes["task"]]
    worker = sv.worker_ids[i][b.codes["worker"]]
    label, prop = reject_unknown_classes(frame, cols, problems, sv.scheme)
    at = np.flatnonzero(~problems.bad & cols.has_prop)
    first_of = np.zeros(b.n, np.int64)
    if at.size:
        t = task[at]
        if update:
            new = at[st.first_prop[t] < 0]
            codes, first = _first_rows(b.codes["task"][new], len(task_ids))
            tn = task_ids[codes]
            st.first_prop[tn] = prop[new[first]]
            st.first_prop_at[tn] = b.offset + new[first]
        conflict = np.zeros(b.n, bool)
        conflict[at] = prop[at] != st.first_prop[t]
        first_of[at] = st.first_prop_at[t]
        classes = sv.scheme.classes

        def reason(i: int) -> str:
            return (
                f"task {cols.task.text[i]!r} is shown proposal {classes[prop[i]]!r} here but "
                f"{classes[st.first_prop[task[i]]]!r} in {src.locate(int(first_of[i]), b.file)}; "
                f"SPA assumes one proposal per task"
            )

        problems.add(conflict, "proposal", cols.prop.text, reason)
    shown = ~problems.bad & cols.has_prop
    return _Checked(problems, task_ids, task, worker, label, shown, first_of)


def _first_rows(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct codes among ``codes`` and the index of each one's first row, in O(n)
    (sorting a batch of task ids is what ``np.unique`` would do)."""
    first = np.full(size, -1, np.int64)
    first[codes[::-1]] = np.arange(codes.shape[0] - 1, -1, -1)  # the last write wins
    present = np.flatnonzero(first >= 0)
    return present, first[present]


def _add_counts(b: _Batch, c: _Checked, st: _State, k: int) -> None:
    """Add the used rows of a batch to the counts, first-use positions and row keys."""
    pos = np.flatnonzero(~c.problems.bad)
    if not pos.size:
        return
    code, label, shown = b.codes["task"][pos], c.label[pos], c.shown[pos]
    num_codes = c.task_ids.shape[0]
    rows = np.flatnonzero(c.task_ids >= 0)
    ids = c.task_ids[rows]
    for out, mask in ((st.biased, shown), (st.unbiased, ~shown)):
        if mask.any():  # per distinct task of the batch, then into the global rows
            local = np.bincount(code[mask] * k + label[mask], minlength=num_codes * k)
            local = local.reshape(num_codes, k)[rows].astype(np.int32)
            if np.unique(ids).size == ids.size:
                out[ids] += local
            else:  # two distinct cells with one text, e.g. 0.0 and -0.0
                np.add.at(out, ids, local)
    codes, first = _first_rows(code, num_codes)
    ut = c.task_ids[codes]
    st.first_used[ut] = np.minimum(st.first_used[ut], b.offset + pos[first])
    keys = st.key(c.task[pos], c.worker[pos], label, shown)
    st.keys[st.num_keys : st.num_keys + keys.size] = keys
    st.num_keys += keys.size


# ----------------------------------------------------------------------------------
# Duplicates
# ----------------------------------------------------------------------------------


def _duplicate_keys(st: _State) -> np.ndarray:
    """Keys that occur more than once among the used rows (sorts the keys in place)."""
    keys = st.keys[: st.num_keys]
    keys.sort()
    return np.unique(keys[1:][keys[1:] == keys[:-1]])


class _Rejected:
    """Rejected rows, gathered batch by batch."""

    def __init__(self) -> None:
        self.parts: list[pd.DataFrame] = []
        self.first: tuple[int, str] | None = None  # (position, message) of the first
        self.count = 0

    def add(self, b: _Batch, problems: Problems, positions: np.ndarray | None = None) -> None:
        bad = np.flatnonzero(problems.bad)
        if not bad.size:
            return
        part = problems.frame(b.frame().rows).assign(file=b.file)
        if positions is not None:
            part = part.assign(_pos=positions[bad])
        else:
            part = part.assign(_pos=b.offset + bad)
        self.parts.append(part)
        self.count += bad.size
        at = int(b.offset + bad[0]) if positions is None else int(positions[bad[0]])
        if self.first is None or at < self.first[0]:
            self.first = (at, message(b.frame(), problems, int(bad[0])))

    def frame(self) -> pd.DataFrame:
        if not self.parts:
            empty = Problems(0).frame(np.zeros(0, np.int64)).assign(file="")
            return empty[_REJECTED_COLUMNS]
        out = pd.concat(self.parts, ignore_index=True).sort_values("_pos", kind="stable")
        return out[_REJECTED_COLUMNS].reset_index(drop=True)


def _remove_duplicates(
    src: _Source, sv: _Survey, st: _State, rejected: _Rejected, batch_size: int, stop: int
) -> None:
    """Find the rows before position ``stop`` whose key repeats an earlier used row's (a
    third read, only when some key repeats), take them out of the counts, report them."""
    dups = _duplicate_keys(st)
    if not dups.size:
        return
    first_at: dict[int, int] = {}
    for i, b in enumerate(_batches(src, batch_size)):
        if b.offset >= stop:
            break
        c = _check(src, i, b, sv, st, update=False)
        pos = np.flatnonzero(~c.problems.bad)
        keys = st.key(c.task[pos], c.worker[pos], c.label[pos], c.shown[pos])
        hit = np.isin(keys, dups)
        if not hit.any():
            continue
        problems = Problems(b.n)
        repeat = np.zeros(b.n, bool)
        first_of = np.zeros(b.n, np.int64)
        for i, key in zip(pos[hit], keys[hit]):
            j = first_at.setdefault(int(key), int(b.offset + i))
            if j != b.offset + i:
                repeat[i], first_of[i] = True, j
        cols = b.columns()
        texts = [cols.task.text, cols.worker.text, cols.label.text]
        names = list(COLUMNS)
        if b.has_proposal:
            texts.append(cols.prop.text)
            names.append("proposal")
        value = np.full(b.n, "", dtype=object)
        value[repeat] = [",".join(t[i] for t in texts) for i in np.flatnonzero(repeat)]
        problems.add(
            repeat,
            ",".join(names),
            value,
            lambda i: f"exact duplicate of {src.locate(int(first_of[i]), b.file)}",
        )
        rejected.add(b, problems)
        r = np.flatnonzero(repeat)
        for out, mask in ((st.biased, c.shown[r]), (st.unbiased, ~c.shown[r])):
            np.subtract.at(out, (c.task[r][mask], c.label[r][mask]), 1)


# ----------------------------------------------------------------------------------
# read_counts
# ----------------------------------------------------------------------------------


def _finish(sv: _Survey, st: _State) -> Counts:
    """The counts of the used tasks, in order of first use."""
    st.keys = np.empty(0, np.uint64)  # the duplicate check is done: free its keys
    first = st.first_used
    if first[-1] != _UNSET and (first[1:] > first[:-1]).all():  # ids already in order
        biased, unbiased, proposals, tasks = st.biased, st.unbiased, st.first_prop, tuple(sv.tasks)
    else:  # a task's first rows were rejected, or all of them: reorder (copies)
        used = np.flatnonzero(first != _UNSET)
        order = used[np.argsort(first[used], kind="stable")]
        biased, unbiased, proposals = st.biased[order], st.unbiased[order], st.first_prop[order]
        tasks = tuple(sv.tasks[j] for j in order.tolist())
    return Counts(
        biased=biased,
        unbiased=unbiased,
        proposals=proposals.astype(np.int32),
        tasks=tasks,
        classes=tuple(sv.scheme.classes),
    )


def read_counts(
    source: PathIn,
    *,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
    batch_size: int = 1 << 20,
) -> CountedTable:
    """Per-task counts straight from a long table in Parquet, read in batches.

    The result equals ``to_counts(read_annotations(...))`` of the same rows (for a folder,
    of its files' rows one after the other, in the order of their paths), with the same
    checks, the same rejected rows and the same messages, but the long table is never
    held in memory. A table with no bad row is read once (twice if a task's rows lie in
    more than one batch, to rule out duplicates across them), and memory grows with the
    number of tasks: the two ``(tasks, classes)`` int32 arrays and the task names, plus
    a few bytes per task and class while reading. If a row is bad, the data are read
    again, twice (once to fix the classes and name the tasks, once to count), and a
    third time only if some row repeats another; that reader also keeps 8 bytes per
    annotation for the exact-duplicate check.

    Columns, classes and row rules are those of :func:`read_annotations`. Rows are
    numbered from 0 within their file. CSV files are refused: they cannot be read in
    batches by row group; convert them to Parquet once (or use :func:`read_annotations`
    when they fit in memory).

    Args:
        source: a ``.parquet`` or ``.pq`` file, or a folder of them (read recursively;
            names starting with ``.`` or ``_`` are skipped).
        classes: keyword-only; the class names in index order (default: from the data).
        on_error: keyword-only; ``"raise"`` (default) raises a ``ValueError`` for the
            first bad row; ``"skip"`` leaves bad rows out, lists them in ``rejected`` and
            warns with their number.
        batch_size: keyword-only; rows per batch (memory per batch is a few hundred
            bytes a row).

    Returns:
        A :class:`CountedTable`: the :class:`Counts`, the ``rejected`` rows (with their
        ``file``), and ``num_rows_read == num_annotations + len(rejected)``.

    Raises:
        FileNotFoundError: if ``source`` does not exist.
        ValueError: for a CSV file or another suffix, a file that is not Parquet, missing
            required columns, no data rows; with ``on_error="raise"``, a bad row (the
            message names the file, the row and the column); with ``"skip"``, if every
            row is bad.

    Warns:
        UserWarning: with ``on_error="skip"``, when rows were rejected; without
            ``classes``, when a class looks like a typo (as :func:`read_annotations`).

    Examples:
        >>> import pathlib, tempfile, numpy as np, cleverjax as cj
        >>> counts = np.array([[2, 1], [0, 3]])
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "annotations.parquet"
        ...     cj.write_table(cj.counts_to_table(counts, np.array([0, -1])), path)
        ...     read = cj.read_counts(path)
        >>> read.counts.biased.tolist(), read.counts.unbiased.tolist(), read.num_rows_read
        ([[2, 1], [0, 0]], [[0, 0], [0, 3]], 6)
    """
    check_choice("on_error", on_error, ON_ERROR)
    batch_size = positive_int("batch_size", batch_size)
    names = None
    if classes is not None:
        names = check_names("classes", classes)
        if not names:
            raise ValueError("`classes` must name at least one class; got an empty sequence")
    src = _open(source)
    counts = clean_counts(
        _record_batches(src, batch_size),
        lambda: _record_batches(src, batch_size),
        names,
    )
    if counts is not None:  # no bad row: one read was enough
        out = CountedTable(counts, _Rejected().frame(), src.num_rows, src.shown)
    else:
        out = _read_with_problems(src, names, batch_size, on_error)
    if names is None:
        c = out.counts
        k = len(c.classes)
        chosen = c.biased.sum(axis=0, dtype=np.int64) + c.unbiased.sum(axis=0, dtype=np.int64)
        proposed = np.bincount(c.proposals[c.proposals >= 0], minlength=k) > 0
        warn_rare_classes(src.shown, c.classes, chosen, proposed, stacklevel=2)
    return out


def _read_with_problems(src, names, batch_size: int, on_error: str) -> CountedTable:
    """:func:`read_counts` of a table with bad rows: a survey, then the checked batches."""
    sv = _survey(src, names, batch_size)
    k = len(sv.scheme.classes)
    st = _State(len(sv.tasks), k, sv.num_workers, src.num_rows)
    rejected = _Rejected()
    stop = src.num_rows
    for i, b in enumerate(_batches(src, batch_size)):
        c = _check(src, i, b, sv, st, update=True)
        rejected.add(b, c.problems)
        _add_counts(b, c, st, k)
        if on_error == "raise" and c.problems.bad.any():
            stop = b.offset + b.n  # an earlier row may repeat another: look before raising
            break
    _remove_duplicates(src, sv, st, rejected, batch_size, stop)
    return _result(src, sv, st, rejected, on_error)


def _result(
    src: _Source, sv: _Survey, st: _State, rejected: _Rejected, on_error: str
) -> CountedTable:
    if rejected.first is not None:
        if on_error == "raise":
            raise ValueError(rejected.first[1])
        if rejected.count == src.num_rows:
            raise ValueError(
                f"{src.shown}: all {src.num_rows} rows were rejected; first: {rejected.first[1]}"
            )
        warnings.warn(
            f"{src.shown}: rejected {rejected.count} of {src.num_rows} rows (listed in "
            f"`.rejected`); first: {rejected.first[1]}",
            UserWarning,
            stacklevel=4,
        )
    return CountedTable(_finish(sv, st), rejected.frame(), src.num_rows, src.shown)
