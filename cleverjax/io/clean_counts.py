"""Counts of a clean Parquet table in one read: the fast path of :func:`~cleverjax.io.read_counts`.

Most large tables have no bad row: no missing value, every label a known class, one
proposal per task and no exact duplicate. For those, :func:`clean_counts` reads the data
once and checks along the way that no row would be rejected. At the first sign of a row
the full checks would reject (or of anything it does not handle, such as float task
names) it gives up and returns ``None``, and :func:`~cleverjax.io.read_counts` runs its
exact two-pass reader, which finds, reports and removes the bad rows. So the fast path
never has to report a row: it only has to be sure there is none.

Each batch is summarised on its own, with vectorised NumPy and Arrow work only: its
distinct task names (an Arrow string array, in order of first row, with a 64-bit hash
of each), its counts per task and label *value* (the smallest unsigned type that holds
them) and each task's proposal. The classes are fixed only at the end, from all labels,
as :func:`~cleverjax.io.encode.choose_classes` does; sorting the hashes of all batches'
task names then numbers the tasks in order of first appearance (names are compared only
where hashes repeat), and the summaries are added into the ``int32`` counts. The
exact-duplicate check keeps nothing per row: it checks each batch on its own, and only
tasks seen in more than one batch need a second look, which reads the data once more
(only then) and keeps a key per row of those tasks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .cells import INT_RE, Values, parse_uniques
from .encode import ClassScheme, Votes, class_kind, default_classes, scheme
from .types import Counts


class _GiveUp(Exception):
    """The table may hold a row the exact reader would reject: use that reader."""


class _Rows(NamedTuple):
    """One batch: per row, ids into the batch's distinct tasks and global ids else."""

    task: np.ndarray  # int64 index into ``names`` (the batch's tasks by first row)
    names: Any  # Arrow string array: the batch's distinct task names
    worker: np.ndarray  # int64 worker id
    label: np.ndarray  # int64 label value id
    prop: np.ndarray  # int64 proposal value id (valid where shown)
    shown: np.ndarray  # bool: a proposal was shown


class _Summary(NamedTuple):
    """One batch, summarised per distinct task."""

    names: Any  # Arrow string array
    shown: np.ndarray  # (tasks, values) counts with a proposal shown, smallest uint type
    not_shown: np.ndarray  # (tasks, values) counts without
    first_prop: np.ndarray  # uint16 per task: proposal value id + 1 (0: none shown)
    fingerprints: np.ndarray  # uint64 per task: a hash of its name


class _Names:
    """Worker text -> id (ids increasing but not dense: a batch of ``m`` distinct texts
    takes the ids ``n .. n + m`` and its new texts keep theirs; one dict call a text)."""

    def __init__(self) -> None:
        self.ids: dict[Any, int] = {}
        self.end = 0  # every id is below this

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, texts: np.ndarray, *, register: bool) -> np.ndarray:
        m, n = len(texts), self.end
        if not register:
            ids = np.fromiter(map(self.ids.get, texts, [-1] * m), np.int64, m)
            if (ids < 0).any():
                raise _GiveUp
            return ids
        size = len(self.ids)
        ids = np.fromiter(map(self.ids.setdefault, texts, range(n, n + m)), np.int64, m)
        if len(self.ids) != size + int((ids >= n).sum()):  # two values with one text:
            raise _GiveUp  # leave it to the exact reader
        self.end = n + m
        return ids


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

    def count(self, s: _Summary) -> None:
        """Add a batch's uses of each value as a label and as a proposal shown."""
        self.label_uses += s.shown.sum(axis=0, dtype=np.int64)
        self.label_uses += s.not_shown.sum(axis=0, dtype=np.int64)
        weights = s.shown.sum(axis=1, dtype=np.int64)  # a task's rows show its one proposal
        shown = np.bincount(s.first_prop, weights=weights, minlength=len(self.label_uses) + 1)
        self.prop_uses += shown[1:].astype(np.int64)

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


def _codes(column: Any) -> tuple[np.ndarray, Any]:
    """Per-row dictionary codes (-1: null; a signed integer type, used only as indices)
    and the dictionary."""
    if not pa.types.is_dictionary(column.type):
        column = pc.dictionary_encode(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    indices = column.indices
    if indices.null_count or not pa.types.is_signed_integer(indices.type):
        indices = indices.cast(pa.int64()).fill_null(-1)
    return indices.to_numpy(), column.dictionary


def _parse_dictionary(values: Any) -> Values:
    """:func:`~cleverjax.io.cells.parse_uniques` of an Arrow array, vectorised for text
    and integers (each task name would otherwise cost a Python call)."""
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = values.fill_null("")
        # Integers of up to 18 digits fit int64 and lie within the parser's cap.
        is_int = pc.match_substring_regex(values, r"^(0|-?[1-9][0-9]{0,17})$").to_numpy(
            zero_copy_only=False
        )
        if pc.any(pc.match_substring_regex(values, r"^-?[1-9][0-9]{18,}$")).as_py():
            return parse_uniques(values.to_pylist())  # huge integers: the parser clips them
        text = values.to_numpy(zero_copy_only=False)
        value = np.zeros(len(text), np.int64)
        value[is_int] = np.asarray(text[is_int], dtype=np.int64) if is_int.any() else 0
        missing = text == ""
    elif pa.types.is_integer(kind) and kind.bit_width < 64 or pa.types.is_signed_integer(kind):
        value = np.clip(values.fill_null(0).to_numpy().astype(np.int64), -(2**62), 2**62)
        if values.null_count:
            return parse_uniques(values.to_pylist())
        text = pc.cast(values, pa.string()).to_numpy(zero_copy_only=False)
        is_int = np.ones(len(text), bool)
        missing = np.zeros(len(text), bool)
    else:
        return parse_uniques(values.to_pylist())
    last = Values(
        np.array([""], object), np.ones(1, bool), np.zeros(1, bool), np.zeros(1, np.int64)
    )
    return Values(
        np.concatenate([text.astype(object), last.text]),
        np.concatenate([missing.astype(bool), last.missing]),
        np.concatenate([is_int.astype(bool), last.is_int]),
        np.concatenate([value, last.value]),
    )


def _first_rows(codes: np.ndarray, size: int) -> np.ndarray:
    """The distinct codes among ``codes``, in order of their first row."""
    first = np.full(size, -1, np.int64)
    first[codes[::-1]] = np.arange(codes.shape[0] - 1, -1, -1)  # the last write wins
    present = np.flatnonzero(first >= 0)
    return present[np.argsort(first[present], kind="stable")]


def _names(dictionary: Any) -> Any:
    """Task or worker names as Arrow strings (the parser's text for them); gives up on
    missing names and on kinds whose text needs the parser's care (floats, booleans)."""
    kind = dictionary.type
    if pa.types.is_integer(kind):
        dictionary = pc.cast(dictionary, pa.string())
    elif not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise _GiveUp
    if dictionary.null_count or pc.any(pc.equal(dictionary, "")).as_py():
        raise _GiveUp  # a missing name
    return dictionary.cast(pa.string())


class _Reader:
    """Batches as :class:`_Rows`, naming workers and label values."""

    def __init__(self) -> None:
        self.workers = _Names()
        self.values = _Classes()

    def rows(self, rb: Any, *, register: bool) -> _Rows:
        tcode, tdict = _codes(rb.column("task"))
        wcode, wdict = _codes(rb.column("worker"))
        if (tcode < 0).any() or (wcode < 0).any():
            raise _GiveUp  # a missing task or worker
        order = _first_rows(tcode, len(tdict))
        rank = np.full(len(tdict), -1, np.int64)
        rank[order] = np.arange(order.shape[0])
        names = _names(tdict).take(pa.array(order))
        worker_ids = self.workers.add(
            _names(wdict).to_numpy(zero_copy_only=False), register=register
        )
        lcode, ldict = _codes(rb.column("label"))
        lvals = _parse_dictionary(ldict)
        if lvals.missing[lcode].any():
            raise _GiveUp  # a missing label
        label = self.values.add(lvals, register=register)[lcode]
        if "proposal" in rb.schema.names:
            pcode, pdict = _codes(rb.column("proposal"))
            pvals = _parse_dictionary(pdict)
            has = ~(pvals.missing | (pvals.is_int & (pvals.value == -1)))
            prop, shown = self.values.add(pvals, register=register)[pcode], has[pcode]
        else:
            prop = np.full(rb.num_rows, -1, np.int64)
            shown = np.zeros(rb.num_rows, bool)
        if register:
            if self.values.first_is_int is None:
                self.values.first_is_int = bool(self.values.is_int[label[0]])
        return _Rows(rank[tcode], names, worker_ids[wcode], label, prop, shown)


def _smallest(counts: np.ndarray) -> np.ndarray:
    top = int(counts.max(initial=0))
    for dtype in (np.uint8, np.uint16, np.uint32):
        if top <= np.iinfo(dtype).max:
            return counts.astype(dtype)
    return counts


def _summarise(rows: _Rows, num_values: int) -> _Summary:
    """Counts and proposal per distinct task; gives up on a duplicate or a conflicting
    proposal within the batch."""
    m = len(rows.names)
    num_workers = int(rows.worker.max(initial=0)) + 1
    if m * num_workers * num_values * 2 >= 2**63:
        raise _GiveUp
    value_side = rows.label * 2 + rows.shown  # (label value, shown) as one number
    key = (rows.task * num_workers + rows.worker) * (2 * num_values) + value_side
    if not _all_distinct(key):
        raise _GiveUp  # an exact duplicate
    at = np.flatnonzero(rows.shown)
    first_prop = np.zeros(m, np.uint16)
    if at.size:
        if num_values >= np.iinfo(np.uint16).max:
            raise _GiveUp
        task, prop = rows.task[at], (rows.prop[at] + 1).astype(np.uint16)
        first_prop[task[::-1]] = prop[::-1]  # the last write wins: each task's first
        if (first_prop[task] != prop).any():
            raise _GiveUp  # a task shown two proposals
    both = np.bincount(rows.task * (2 * num_values) + value_side, minlength=m * 2 * num_values)
    both = both.reshape(m, num_values, 2)
    shown, not_shown = _smallest(both[:, :, 1]), _smallest(both[:, :, 0])
    return _Summary(rows.names, shown, not_shown, first_prop, _fingerprints(rows.names))


def _all_distinct(key: np.ndarray) -> bool:
    # A stable sort (radix or merge of runs) is quick on rows grouped by task.
    key = np.sort(key, kind="stable")
    return not (key[1:] == key[:-1]).any()


def clean_counts(
    batches: Iterable[Any],
    again: Callable[[], Iterable[Any]],
    classes: tuple[str, ...] | None,
) -> Counts | None:
    """The counts of a table with no bad row, or ``None`` if it may have one.

    Args:
        batches: the record batches of the source, in order.
        again: returns those batches once more (called only when a task spans batches,
            to look for duplicates across them).
        classes: the class names given, or ``None``.
    """
    reader = _Reader()
    summaries: list[_Summary | None] = []
    try:
        for rb in batches:
            if rb.num_rows:
                rows = reader.rows(rb, register=True)
                summary = _summarise(rows, len(reader.values.names))
                reader.values.count(summary)
                summaries.append(summary)
        if not summaries:
            return None
        ids, names = _number_tasks(summaries)
        first_prop = _proposals(summaries, ids, len(names))
        spanning = _spanning(ids, len(names))
        if spanning is not None and not _unique_across(again(), reader, ids, spanning):
            return None
        sch = reader.values.scheme(classes)
        class_of = reader.values.class_of(sch)
    except _GiveUp:
        return None
    biased, unbiased = _add_up(summaries, ids, len(names), class_of, len(sch.classes))
    del summaries, ids
    proposals = np.full(len(names), -1, np.int32)
    shown = first_prop > 0
    proposals[shown] = class_of[first_prop[shown].astype(np.int64) - 1]
    del first_prop, shown
    return Counts(biased, unbiased, proposals, _as_tuple(names), tuple(sch.classes))


def _as_tuple(names: Any, chunk: int = 1 << 16) -> tuple[str, ...]:
    """Arrow strings as a tuple of ``str``, converted a slice at a time (no list of all
    of them next to the tuple)."""
    slices = (names.slice(i, chunk).to_pylist() for i in range(0, len(names), chunk))
    return tuple(itertools.chain.from_iterable(slices))


def _fingerprints(names: Any) -> np.ndarray:
    """A 64-bit FNV-1a hash of each Arrow string (with its length), vectorised over the
    strings, one byte position at a time."""
    n = len(names)
    _, offsets_buf, data_buf = names.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32)[names.offset : names.offset + n + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    start, length = offsets[:-1].astype(np.int64), np.diff(offsets)
    h = np.full(n, 0xCBF29CE484222325, np.uint64) ^ length.astype(np.uint64)
    prime = np.uint64(0x100000001B3)
    for j in range(int(length.max(initial=0))):
        live = np.flatnonzero(length > j)
        h[live] = (h[live] ^ data[start[live] + j]) * prime  # wraps modulo 2**64
    return h


def _number_tasks(summaries: list[Any]) -> tuple[list[np.ndarray], Any]:
    """Global task ids of each batch's tasks (order of first appearance) and the names.

    Names with distinct fingerprints are distinct, so only tasks whose fingerprints
    repeat (a task in several batches) are matched, by comparing their names; a true
    collision of two names (never seen in practice) falls back to Arrow's dictionary
    encoding of all names."""
    sizes = [len(s.names) for s in summaries]
    names = pa.concat_arrays([s.names for s in summaries])
    fp = np.concatenate([s.fingerprints for s in summaries])
    for i, s in enumerate(summaries):
        summaries[i] = s._replace(names=None, fingerprints=None)  # free them
    order = np.argsort(fp, kind="stable")
    fp = fp[order]
    starts = np.concatenate([[True], fp[1:] != fp[:-1]])
    del fp
    if starts.all():  # every name distinct: ids in reading order
        ids = np.arange(len(names))
    else:
        first = order[starts]  # the stable sort puts each name's first row first
        rep = np.empty_like(order)
        rep[order] = first[np.cumsum(starts) - 1]
        del first, starts, order
        again = np.flatnonzero(rep != np.arange(rep.shape[0]))
        same = pc.equal(names.take(pa.array(again)), names.take(pa.array(rep[again])))
        if not pc.all(same).as_py():
            return _number_tasks_by_encoding(names, sizes)
        is_first = np.ones(rep.shape[0], bool)
        is_first[again] = False
        ids = (np.cumsum(is_first) - 1)[rep]
        names = names.filter(pa.array(is_first))
    return np.split(ids, np.cumsum(sizes)[:-1]), names


def _number_tasks_by_encoding(names: Any, sizes: list[int]) -> tuple[list[np.ndarray], Any]:
    encoded = pc.dictionary_encode(names)
    ids = encoded.indices.to_numpy().astype(np.int64)
    names = encoded.dictionary
    del encoded
    pa.default_memory_pool().release_unused()  # the encoder's hash table, else kept
    return np.split(ids, np.cumsum(sizes)[:-1]), names


def _proposals(summaries: list[Any], ids: list[np.ndarray], n: int) -> np.ndarray:
    """Each task's proposal value id + 1; gives up on two across batches."""
    first = np.zeros(n, np.uint16)
    for s, g in zip(summaries, ids):
        p = s.first_prop
        new = (p > 0) & (first[g] == 0)
        first[g[new]] = p[new]
        if ((p > 0) & (first[g] != p)).any():
            raise _GiveUp
    return first


def _spanning(ids: list[np.ndarray], n: int) -> np.ndarray | None:
    """Which tasks occur in more than one batch (``None``: none does)."""
    seen = np.zeros(n, bool)
    spans = np.zeros(n, bool)
    for g in ids:
        spans[g[seen[g]]] = True
        seen[g] = True
    return spans if spans.any() else None


def _unique_across(
    batches: Iterable[Any], reader: _Reader, ids: list[np.ndarray], spans: np.ndarray
) -> bool:
    """No two rows of the tasks ``spans`` (seen in several batches) are duplicates."""
    num_workers = reader.workers.end + 1
    num_values = len(reader.values.names) + 1
    if spans.shape[0] * num_workers * num_values * 2 >= 2**63:
        raise _GiveUp
    keys = []
    nonempty = (rb for rb in batches if rb.num_rows)
    for rb, g in itertools.zip_longest(nonempty, ids):
        if rb is None or g is None:
            raise _GiveUp  # the second read differs from the first
        rows = reader.rows(rb, register=False)
        task = g[rows.task]
        at = np.flatnonzero(spans[task])
        key = (task[at] * num_workers + rows.worker[at]) * num_values + rows.label[at]
        keys.append(key * 2 + rows.shown[at])
    return _all_distinct(np.concatenate(keys))


def _add_up(
    summaries: list[_Summary | None], ids: list[np.ndarray], n: int, class_of: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``int32`` counts by task and class (frees the summaries as it goes)."""
    out = (np.zeros((n, k), np.int32), np.zeros((n, k), np.int32))
    for i, g in enumerate(ids):
        s, summaries[i] = summaries[i], None
        assert s is not None
        for total, local in zip(out, (s.shown, s.not_shown)):
            values = np.flatnonzero(local.any(axis=0))
            if not values.size:
                continue
            cols = class_of[values]
            if g[-1] - g[0] == g.shape[0] - 1 and (np.diff(g) == 1).all():  # a run of ids
                block = total[g[0] : g[-1] + 1]
                block[:, cols] += local[:, values]
            else:  # (task, class) pairs are distinct: one scatter
                total[g[:, None], cols[None, :]] += local[:, values]
    return out
