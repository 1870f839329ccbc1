"""Counts of a clean Parquet table in one read: the fast path of :func:`~cleverjax.io.read_counts`.

Most large tables have no bad row: no missing value, every label a known class, one
proposal per task and no exact duplicate. For those, :func:`clean_counts` reads the data
once, counting each task's rows by label *value* (the classes are fixed only at the end,
from all labels, as :func:`~cleverjax.io.encode.choose_classes` does) and checking along
the way that no row would be rejected. At the first sign of a row the full checks would
reject (or of anything it does not handle, such as float task names) it gives up and
returns ``None``, and :func:`~cleverjax.io.read_counts` runs its exact two-pass reader,
which finds, reports and removes the bad rows. So the fast path never has to report a
row: it only has to be sure there is none.

Memory: per task, two 16-bit counters per label value (widened to 32 bits only if a
count could pass 65,535) in arrays allocated lazily over the number of rows, one byte
pair for the first proposal, and the task name (a Python ``str``, which
:class:`~cleverjax.io.Counts` holds anyway). The exact-duplicate check keeps nothing per
row: it checks each batch on its own, and only tasks seen in more than one batch need a
second look, which reads the data once more (only then) and keeps a key per row of those
tasks.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cells import INT_RE, Values
from .encode import ClassScheme, Votes, class_kind, default_classes, scheme
from .types import Counts

_ALL_COLUMNS = ("task", "worker", "label", "proposal")
_U16_MAX = np.iinfo(np.uint16).max


class _GiveUp(Exception):
    """The table may hold a row the exact reader would reject: use that reader."""


class _Rows(NamedTuple):
    """One batch, as global ids per row."""

    task: np.ndarray  # int64 task id (order of first appearance)
    worker: np.ndarray  # int64 worker id
    label: np.ndarray  # int64 label value id
    prop: np.ndarray  # int64 proposal value id (valid where shown)
    shown: np.ndarray  # bool: a proposal was shown
    task_code: np.ndarray  # int64 code into the batch's distinct tasks
    task_ids: np.ndarray  # int64 id of each of the batch's distinct tasks (-1: absent)
    new_from: int  # ids from here on were first seen in this batch


class _Names:
    """Text -> id, ids increasing in order of first appearance but not dense: a batch of
    ``m`` distinct texts takes the ids ``n .. n + m`` and its new texts keep theirs (one
    dict lookup a text; :meth:`dense` renumbers at the end). The dict's ``str`` keys
    become :attr:`Counts.tasks` without a copy."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.end = 0  # every id is below this

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, texts: np.ndarray, *, register: bool) -> np.ndarray:
        m, n = len(texts), self.end
        if not register:
            get = self.ids.get
            ids = np.fromiter(map(get, texts, [-1] * m), np.int64, m)
            if (ids < 0).any():
                raise _GiveUp
            return ids
        size = len(self.ids)
        ids = np.fromiter(map(self.ids.setdefault, texts, range(n, n + m)), np.int64, m)
        new = ids >= n
        if len(self.ids) != size + int(new.sum()):  # two values with one text: leave
            raise _GiveUp  # it to the exact reader
        self.end = n + m
        return ids

    def dense(self) -> np.ndarray:
        """The sparse id of each text, in order of first appearance."""
        return np.fromiter(self.ids.values(), np.int64, len(self.ids))


class _Classes:
    """Label and proposal values by text, with what decides the classes."""

    def __init__(self) -> None:
        self.names = _Names()
        self.is_int: list[bool] = []
        self.value: list[int] = []
        self.label_uses = np.zeros(0, np.int64)
        self.prop_uses = np.zeros(0, np.int64)
        self.first_is_int: bool | None = None

    def add(self, vals: Values, *, register: bool) -> np.ndarray:
        """Value ids of a dictionary's parsed entries (its last entry, missing, gets -1)."""
        n = len(self.names)
        ids = np.full(len(vals.text), -1, np.int64)
        get = self.names.ids.get
        for i, t in enumerate(vals.text[:-1].tolist()):
            j = get(t)
            if j is None:
                if not register:
                    raise _GiveUp
                j = self.names.ids[t] = len(self.names.ids)
            ids[i] = j
        new = ids[:-1] >= n
        if np.unique(ids[:-1][new]).size != int(new.sum()):
            raise _GiveUp  # two values with one text
        self.is_int.extend(vals.is_int[:-1][new].tolist())
        self.value.extend(vals.value[:-1][new].tolist())
        grow = len(self.names) - n
        self.label_uses = np.concatenate([self.label_uses, np.zeros(grow, np.int64)])
        self.prop_uses = np.concatenate([self.prop_uses, np.zeros(grow, np.int64)])
        return ids

    def scheme(self, classes: tuple[str, ...] | None) -> ClassScheme:
        """As :func:`~cleverjax.io.stream._survey` decides it."""
        is_int = np.asarray(self.is_int, bool)
        used_label, used_prop = self.label_uses > 0, self.prop_uses > 0
        num_int = int(self.label_uses[is_int].sum() + self.prop_uses[is_int].sum())
        votes = Votes(num_int, int(self.label_uses.sum() + self.prop_uses.sum()), self.first_is_int)
        given = classes is not None
        if given and any(INT_RE.fullmatch(c) for c in classes):
            return scheme(classes, True, False, names_only=True)
        int_kind = class_kind(votes)
        if classes is None:
            texts = list(self.names.ids)
            seen = {
                (texts[i], self.is_int[i], self.value[i])
                for i in np.flatnonzero(used_label | used_prop)
            }
            classes = default_classes(seen, int_kind)
        return scheme(classes, given, int_kind)

    def class_of(self, sch: ClassScheme) -> np.ndarray:
        """Class index of each used value; gives up if one would be rejected."""
        out = np.full(len(self.names), -1, np.int64)
        for i, text in enumerate(self.names.ids):
            if not (self.label_uses[i] or self.prop_uses[i]):
                continue
            if not sch.by_name and self.is_int[i] != sch.int_kind:
                raise _GiveUp  # mixed-type label or proposal
            out[i] = sch.table.get(text, -1)
            if out[i] < 0:
                raise _GiveUp  # unknown class
        return out


class _Counter:
    """Per-task counts by label value, lazily allocated over ``capacity`` tasks."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.dtype = np.uint16 if capacity <= _U16_MAX else np.int32
        self.bound = 0  # no count exceeds this
        self.columns: list[tuple[np.ndarray, np.ndarray]] = []  # per value: (shown, not)
        self.first_prop = np.zeros(capacity, np.uint16)  # proposal value id + 1 (0: none)

    def add(self, rows: _Rows, num_values: int) -> None:
        while len(self.columns) < num_values:  # np.zeros: pages come as they are touched
            self.columns.append(
                (np.zeros(self.capacity, self.dtype), np.zeros(self.capacity, self.dtype))
            )
        present = np.flatnonzero(rows.task_ids >= 0)
        ids = rows.task_ids[present]
        num_codes = rows.task_ids.shape[0]
        flat = rows.task_code * num_values + rows.label
        for side, mask in ((0, rows.shown), (1, ~rows.shown)):
            local = np.bincount(flat[mask], minlength=num_codes * num_values)
            local = local.reshape(num_codes, num_values)[present]
            self.bound += int(local.max(initial=0))
            if self.bound > np.iinfo(self.dtype).max:
                self._widen()
            for v in np.flatnonzero(local.any(axis=0)):
                column = self.columns[v][side]
                column[ids] += local[:, v].astype(self.dtype)

    def _widen(self) -> None:
        self.dtype = np.int32
        self.columns = [(a.astype(np.int32), b.astype(np.int32)) for a, b in self.columns]

    def check_proposals(self, rows: _Rows) -> None:
        """Record each task's first proposal; give up on a conflicting one."""
        at = np.flatnonzero(rows.shown)
        if not at.size:
            return
        if len(self.columns) >= _U16_MAX:
            raise _GiveUp
        task, prop = rows.task[at], rows.prop[at] + 1
        new = self.first_prop[task] == 0
        if new.any():  # the first row of each new task: write in reverse, the first wins
            self.first_prop[task[new][::-1]] = prop[new][::-1]
        if (self.first_prop[task] != prop).any():
            raise _GiveUp  # a task shown two proposals

    def counts(
        self, class_of: np.ndarray, num_classes: int, rows: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        """Counts and proposals of the tasks at ``rows`` (their sparse ids), int32."""
        n = rows.shape[0]
        biased = np.zeros((n, num_classes), np.int32)
        unbiased = np.zeros((n, num_classes), np.int32)
        for v, (shown, not_shown) in enumerate(self.columns):
            if class_of[v] >= 0:
                biased[:, class_of[v]] += shown[rows]
                unbiased[:, class_of[v]] += not_shown[rows]
        self.columns = []
        first = self.first_prop[rows].astype(np.int64) - 1
        proposals = np.where(first >= 0, class_of[np.maximum(first, 0)], -1).astype(np.int32)
        return biased, unbiased, proposals


def _codes(column: Any) -> tuple[np.ndarray, Any]:
    """Per-row dictionary codes (-1: null) and the dictionary."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    codes = column.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, column.dictionary


def _name_texts(dictionary: Any) -> np.ndarray:
    """Task or worker names as ``str`` (what the parser would make of them); gives up on
    kinds whose text needs the parser's care (floats, booleans, bytes)."""
    kind = dictionary.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if dictionary.null_count or pc.any(pc.equal(dictionary, "")).as_py():
            raise _GiveUp  # a missing name
        return dictionary.to_numpy(zero_copy_only=False)
    if pa.types.is_integer(kind):
        if dictionary.null_count:
            raise _GiveUp
        return pc.cast(dictionary, pa.string()).to_numpy(zero_copy_only=False)
    raise _GiveUp


def _first_rows(codes: np.ndarray, size: int) -> np.ndarray:
    """The distinct codes among ``codes``, in order of their first row."""
    first = np.full(size, -1, np.int64)
    first[codes[::-1]] = np.arange(codes.shape[0] - 1, -1, -1)  # the last write wins
    present = np.flatnonzero(first >= 0)
    return present[np.argsort(first[present], kind="stable")]


class _Reader:
    """Batches of a source as :class:`_Rows`, naming tasks, workers and values."""

    def __init__(self) -> None:
        self.tasks = _Names()
        self.workers = _Names()
        self.values = _Classes()

    def rows(self, rb: Any, *, register: bool) -> _Rows:
        from .stream import _parse_dictionary

        names = rb.schema.names
        tcode, tdict = _codes(rb.column("task"))
        wcode, wdict = _codes(rb.column("worker"))
        if (tcode < 0).any() or (wcode < 0).any():
            raise _GiveUp  # a missing task or worker
        order = _first_rows(tcode, len(tdict))
        task_ids = np.full(len(tdict), -1, np.int64)
        new_from = self.tasks.end
        task_ids[order] = self.tasks.add(
            _name_texts(tdict.take(pa.array(order))), register=register
        )
        worker_ids = self.workers.add(_name_texts(wdict), register=register)
        lcode, ldict = _codes(rb.column("label"))
        lvals = _parse_dictionary(ldict)
        if lvals.missing[lcode].any():
            raise _GiveUp  # a missing label
        label = self.values.add(lvals, register=register)[lcode]
        if "proposal" in names:
            pcode, pdict = _codes(rb.column("proposal"))
            pvals = _parse_dictionary(pdict)
            has = ~(pvals.missing | (pvals.is_int & (pvals.value == -1)))
            prop_ids = self.values.add(pvals, register=register)
            prop, shown = prop_ids[pcode], has[pcode]
        else:
            prop = np.full(rb.num_rows, -1, np.int64)
            shown = np.zeros(rb.num_rows, bool)
        if register:
            if self.values.first_is_int is None and rb.num_rows:
                self.values.first_is_int = bool(self.values.is_int[label[0]])
            num_values = len(self.values.names)
            self.values.label_uses += np.bincount(label, minlength=num_values)
            self.values.prop_uses += np.bincount(prop[shown], minlength=num_values)
        return _Rows(
            task_ids[tcode], worker_ids[wcode], label, prop, shown, tcode, task_ids, new_from
        )


def _unique_within(rows: _Rows, num_values: int) -> bool:
    """No two rows of the batch share task, worker, label and whether shown."""
    num_workers = int(rows.worker.max(initial=0)) + 1
    if rows.task_ids.shape[0] * num_workers * num_values * 2 >= 2**63:
        raise _GiveUp
    key = (rows.task_code * num_workers + rows.worker) * num_values
    key = (key + rows.label) * 2 + rows.shown
    return _all_distinct(key)


def clean_counts(
    batches: Any, again: Any, num_rows: int, classes: tuple[str, ...] | None
) -> Counts | None:
    """The counts of a table with no bad row, or ``None`` if it may have one.

    Args:
        batches: the record batches of the source, in order.
        again: a callable returning those batches once more (read only when a task
            spans batches, to look for duplicates across them).
        num_rows: rows in the source (bounds the number of tasks).
        classes: the class names given, or ``None``.
    """
    reader = _Reader()
    counter = _Counter(num_rows)
    spanning: list[np.ndarray] = []
    try:
        for rb in batches:
            if rb.num_rows == 0:
                continue
            rows = reader.rows(rb, register=True)
            num_values = len(reader.values.names)
            if not _unique_within(rows, num_values):
                return None
            old = rows.task_ids[(rows.task_ids >= 0) & (rows.task_ids < rows.new_from)]
            if old.size:
                spanning.append(old)
            counter.check_proposals(rows)
            counter.add(rows, num_values)
        if not len(reader.tasks):
            return None
        if spanning and not _unique_across(again(), reader, np.concatenate(spanning)):
            return None
        sch = reader.values.scheme(classes)
        class_of = reader.values.class_of(sch)
    except _GiveUp:
        return None
    biased, unbiased, proposals = counter.counts(class_of, len(sch.classes), reader.tasks.dense())
    tasks = tuple(reader.tasks.ids)
    reader.tasks.ids.clear()
    return Counts(biased, unbiased, proposals, tasks, tuple(sch.classes))


def _unique_across(batches: Any, reader: _Reader, spanning: np.ndarray) -> bool:
    """No two rows of the tasks ``spanning`` (seen in several batches) are duplicates."""
    mark = np.zeros(reader.tasks.end, bool)
    mark[spanning] = True
    num_workers = reader.workers.end + 1
    num_values = len(reader.values.names) + 1
    if reader.tasks.end * num_workers * num_values * 2 >= 2**63:
        raise _GiveUp
    keys = []
    for rb in batches:
        if rb.num_rows == 0:
            continue
        rows = reader.rows(rb, register=False)
        at = np.flatnonzero(mark[rows.task])
        key = (rows.task[at] * num_workers + rows.worker[at]) * num_values + rows.label[at]
        keys.append(key * 2 + rows.shown[at])
    key = np.concatenate(keys)
    return _all_distinct(key)


def _all_distinct(key: np.ndarray) -> bool:
    # A stable sort (radix or merge of runs) is quick on rows grouped by task.
    key = np.sort(key, kind="stable")
    return not (key[1:] == key[:-1]).any()
