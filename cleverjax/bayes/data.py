"""Data preparation for the Bayesian model: validation, merging of identical images into
weighted rows, the table of distinct likelihood entries, padding to bucketed shapes and
sharding over devices.

The likelihood depends on an image only through (proposal, probe, biased counts, unbiased
counts), so the exact objective over all images is a weighted sum over distinct rows; and
the part in ``t = p[rho]`` depends only on (prior row, proposal, c, N, u, M), so it is
computed once per distinct *entry*. Shapes are padded to a few bucketed sizes with
zero-weight rows so that data sets of similar size share one compiled program (in a
process, and across processes through the persistent compilation cache).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Float, Int

from .. import _checks, distributed
from ..distributed import local_arrays


class EntryTable(NamedTuple):
    """Distinct (prior row, proposal, c, N, u, M) tuples: everything the part of the
    likelihood in ``t = p[rho]`` depends on.

    Attributes:
        group: ``(entries,)`` prior row: the proposal, or K for a probe.
        rho: ``(entries,)`` proposed class.
        c: ``(entries,)`` biased annotations on the proposal.
        n: ``(entries,)`` biased annotations N.
        u: ``(entries,)`` unbiased annotations on the proposal.
        m: ``(entries,)`` unbiased annotations M.
        pair: ``(entries,)`` index of the entry's (c, N) pair: the polynomial weights
            depend on nothing else, so they are computed once per pair.
        basis: ``(entries,)`` index of the entry's (prior row, proposal, N, u, M): the
            Beta-function ratios of the part in t depend on nothing else (not on c), so
            they are computed once per basis key (see
            :func:`cleverjax.bayes.likelihood.t_basis`).
        pair_c: ``(pairs,)`` c of each distinct pair.
        pair_n: ``(pairs,)`` N of each distinct pair.
        basis_entry: ``(bases,)`` an entry of each distinct basis key.
    """

    group: Int[Array, " entries"]
    rho: Int[Array, " entries"]
    c: Int[Array, " entries"]
    n: Int[Array, " entries"]
    u: Int[Array, " entries"]
    m: Int[Array, " entries"]
    pair: Int[Array, " entries"]
    basis: Int[Array, " entries"]
    pair_c: Int[Array, " pairs"]
    pair_n: Int[Array, " pairs"]
    basis_entry: Int[Array, " bases"]

    @property
    def num_entries(self) -> int:
        return self.group.shape[0]

    def take(self, idx: Array) -> EntryTable:
        """The entries ``idx`` (the first eight fields, one value per entry, as :func:`pad`
        treats them; pair and basis tables unchanged)."""
        return EntryTable(*(x[idx] for x in self[:8]), *self[8:])


class SPAData(NamedTuple):
    """Images for the model, after merging identical rows (their ``weight`` counts them).

    Attributes:
        proposals: ``(rows,)`` proposed class.
        counts: ``(rows, classes)`` biased counts (annotations made with the proposal).
        unbiased: ``(rows, classes)`` unbiased counts (no proposal shown).
        probe: ``(rows,)`` the proposal was drawn at random, independently of the image.
        weight: ``(rows,)`` how many images share this row (0 for padding).
        entry: ``(rows,)`` the row's entry in ``table``.
        table: the distinct entries (see :class:`EntryTable`).
    """

    proposals: Int[Array, " rows"]
    counts: Int[Array, "rows classes"]
    unbiased: Int[Array, "rows classes"]
    probe: Bool[Array, " rows"]
    weight: Float[Array, " rows"]
    entry: Int[Array, " rows"]
    table: EntryTable

    def take(self, idx) -> SPAData:
        """The rows ``idx`` (the entry table is shared)."""
        rows = (self.proposals, self.counts, self.unbiased, self.probe, self.weight, self.entry)
        return SPAData(*(x[idx] for x in rows), self.table)

    def own_entries(self) -> SPAData:
        """The same rows with one entry each (for likelihoods that differ per row)."""
        return self._replace(
            entry=jnp.arange(self.num_rows, dtype=jnp.int32), table=row_entries(self)
        )

    @property
    def num_rows(self) -> int:
        return self.proposals.shape[0]


def row_entries(data: SPAData) -> EntryTable:
    """Each row's entry (traceable)."""
    num_classes = data.counts.shape[1]
    is_rho = data.proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
    c = jnp.sum(jnp.where(is_rho, data.counts, 0), axis=1)
    n = jnp.sum(data.counts, axis=1)
    own = jnp.arange(data.proposals.shape[0], dtype=jnp.int32)
    return EntryTable(
        group=jnp.where(data.probe, num_classes, data.proposals).astype(jnp.int32),
        rho=data.proposals.astype(jnp.int32),
        c=c,
        n=n,
        u=jnp.sum(jnp.where(is_rho, data.unbiased, 0), axis=1),
        m=jnp.sum(data.unbiased, axis=1),
        pair=own,
        basis=own,
        pair_c=c,
        pair_n=n,
        basis_entry=own,
    )


def _calibration(n, m, group, num_classes: int):
    """Biased annotations plus unbiased ones or a probe (NumPy or JAX arrays alike)."""
    return (n > 0) & ((m > 0) | (group == num_classes))


def entry_calibrated(table: EntryTable, num_classes: int) -> Bool[Array, " entries"]:
    """Entries that identify delta: biased annotations plus unbiased ones or a probe."""
    return _calibration(table.n, table.m, table.group, num_classes)


class LivePairs(NamedTuple):
    """The (c, N) pairs of the calibration entries: under the cut, the only polynomial
    weights that follow the current globals (the others are frozen for a round).

    Attributes:
        entry_pair: ``(entries,)`` each calibration entry's pair in ``c`` and ``n`` (0 for
            the other entries).
        c: ``(pairs,)`` c of each pair (padded to a bucketed size of at least
            ``MIN_LIVE_PAIRS``; empty when no entry is calibration data).
        n: ``(pairs,)`` N of each pair.
        entries: ``(live entries,)`` the calibration entries' indices, padded (to a
            bucketed size of at least ``MIN_LIVE_PAIRS``) with the number of entries, an
            index past the end.
    """

    entry_pair: Int[Array, " entries"]
    c: Int[Array, " pairs"]
    n: Int[Array, " pairs"]
    entries: Int[Array, " live"]


def live_pairs(table: EntryTable, num_classes: int) -> LivePairs:
    """The :class:`LivePairs` of ``table`` (computed on the host)."""
    n, m, group = (np.asarray(x) for x in (table.n, table.m, table.group))
    return entry_pairs(table, _calibration(n, m, group, num_classes))


def entry_pairs(table: EntryTable, cal: np.ndarray | None = None) -> LivePairs:
    """The (c, N) pairs that the entries ``cal`` (a mask; every entry when ``None``) use,
    as :class:`LivePairs`: padded tables hold a pair for every c up to their largest N,
    of which a few calibration entries use a handful (computed on the host)."""
    table = EntryTable(*(np.asarray(x) for x in table))
    if cal is None:
        cal = np.ones(table.num_entries, bool)
    pair_c, pair_n = table.pair_c, table.pair_n
    used, inverse = np.unique(table.pair[cal], return_inverse=True)
    entry_pair = np.zeros(table.num_entries, np.int32)
    entry_pair[cal] = inverse.reshape(-1)
    size = bucket(max(len(used), MIN_LIVE_PAIRS)) if len(used) else 0
    c, n_ = (_pad_rows(x[used], size) if size else x[:0] for x in (pair_c, pair_n))
    live = np.flatnonzero(cal)
    entries = np.full(bucket(max(len(live), MIN_LIVE_PAIRS)) if len(live) else 0, len(cal))
    entries[: len(live)] = live
    return LivePairs(entry_pair, c.astype(np.int32), n_.astype(np.int32), _i32(entries))


MIN_LIVE_PAIRS = 32
"""Live pairs are padded to at least this many: campaigns that differ only in how many
distinct (c, N) pairs their calibration images have (a handful, varying from seed to
seed) then share one compiled optimiser program; 32 pairs cost next to nothing."""


def calibrated(data: SPAData) -> Bool[Array, " rows"]:
    """Rows that identify delta: biased annotations plus unbiased ones or a probe proposal."""
    return entry_calibrated(data.table, data.counts.shape[1])[data.entry]


def calibrated_rows(data: SPAData) -> np.ndarray:
    """Indices of the rows of :func:`calibrated`, computed on the host (no small device
    programs to compile)."""
    k = data.counts.shape[1]
    group = np.where(np.asarray(data.probe), k, np.asarray(data.proposals))
    n, m = np.asarray(data.counts).sum(axis=1), np.asarray(data.unbiased).sum(axis=1)
    return np.flatnonzero(_calibration(n, m, group, k))


# ----------------------------------------------------------------------------------
# Merging identical images
# ----------------------------------------------------------------------------------


def _unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of ``a`` (in an arbitrary but fixed order), each row's index among
    them, and their multiplicities. Rows are compared as raw bytes: sorting one opaque
    item per row is an order of magnitude faster than ``np.unique(axis=0)``."""
    a = np.ascontiguousarray(a)
    flat = a.view(np.dtype((np.void, a.itemsize * a.shape[1]))).reshape(-1)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return uniq.view(a.dtype).reshape(-1, a.shape[1]), inverse.reshape(-1), counts


def _row_keys(proposals, counts, unbiased, probe) -> np.ndarray:
    """One integer row per image holding everything the likelihood depends on, in the
    narrowest integer type that holds every value (the sort behind np.unique is the
    memory peak of a large fit, and int16 keys take a quarter of int64's)."""
    n, k = counts.shape
    largest = max(int(counts.max(initial=0)), int(unbiased.max(initial=0)), k)
    dtype = next(t for t in (np.int16, np.int32, np.int64) if largest <= np.iinfo(t).max)
    key = np.empty((n, 2 + 2 * k), dtype)
    key[:, 0], key[:, 1], key[:, 2 : 2 + k], key[:, 2 + k :] = proposals, probe, counts, unbiased
    return key


def _entry_table(rho, is_probe, c, u, k: int) -> tuple[EntryTable, np.ndarray]:
    """The distinct entries of the rows (rho, probe, c, u) and each row's entry."""
    rows = np.arange(len(rho))
    entry_key = np.stack(
        [np.where(is_probe, k, rho), rho, c[rows, rho], c.sum(axis=1), u[rows, rho], u.sum(axis=1)],
        axis=1,
    )
    entries, entry, _ = _unique_rows(entry_key)
    pairs, pair, _ = _unique_rows(entries[:, 2:4])
    bases, basis, _ = _unique_rows(entries[:, [0, 1, 3, 4, 5]])
    basis = basis.reshape(-1)
    basis_entry = np.empty(len(bases), np.int64)
    basis_entry[basis] = np.arange(len(entries))
    table = EntryTable(
        *(_i32(entries[:, i]) for i in range(6)),
        pair=_i32(pair.reshape(-1)),
        basis=_i32(basis),
        pair_c=_i32(pairs[:, 0]),
        pair_n=_i32(pairs[:, 1]),
        basis_entry=_i32(basis_entry),
    )
    return table, entry.reshape(-1)


def host_array(x, dtype=None) -> Array:
    """``x`` on the default device as ``dtype``, converted on the host. ``jnp.asarray`` of
    a NumPy array compiles a small program for each new shape (and dtype conversion),
    which fits of data sets of many sizes would each pay for."""
    return jax.device_put(np.asarray(x, dtype))


def _i32(x) -> Array:
    return host_array(x, np.int32)


def compress(
    proposals: np.ndarray, counts: np.ndarray, unbiased: np.ndarray, probe: np.ndarray
) -> tuple[SPAData, np.ndarray]:
    """Merge identical images into weighted rows and list the distinct entries; return the
    rows and each image's row."""
    k = counts.shape[1]
    uniq, inverse, weight = _unique_rows(_row_keys(proposals, counts, unbiased, probe))
    uniq = uniq.astype(np.int64)
    rho, is_probe = uniq[:, 0], uniq[:, 1] > 0
    c, u = uniq[:, 2 : 2 + k], uniq[:, 2 + k :]
    table, entry = _entry_table(rho, is_probe, c, u, k)
    data = SPAData(
        proposals=_i32(rho),
        counts=_i32(c),
        unbiased=_i32(u),
        probe=host_array(is_probe, bool),
        weight=host_array(weight, jnp.result_type(float)),
        entry=_i32(entry),
        table=table,
    )
    return data, inverse.reshape(-1)


# ----------------------------------------------------------------------------------
# Levels of annotation counts
# ----------------------------------------------------------------------------------


LEVEL_BASE = 32
"""Rows whose polynomials have at most this many terms (N + 1) form the first level."""

LEVEL_RATIO = 4
"""Each further level holds rows with up to this many times the terms of the one before."""


class Level(NamedTuple):
    """Rows whose numbers of biased annotations are of one order of magnitude.

    Attributes:
        rows: indices of the level's rows in the full data.
        data: the rows, with their own entry table.
        num_terms: polynomial terms of the level: its largest N + 1.
    """

    rows: np.ndarray
    data: SPAData
    num_terms: int


def restrict(data: SPAData, rows: np.ndarray) -> SPAData:
    """The rows ``rows`` of ``data`` (distinct rows, kept as they are) with a table of only
    their own entries."""
    rho = np.asarray(data.proposals)[rows].astype(np.int64)
    probe = np.asarray(data.probe)[rows]
    c = np.asarray(data.counts)[rows].astype(np.int64)
    u = np.asarray(data.unbiased)[rows].astype(np.int64)
    table, entry = _entry_table(rho, probe, c, u, c.shape[1])
    return SPAData(
        _i32(rho), _i32(c), _i32(u), host_array(probe, bool),
        host_array(np.asarray(data.weight)[rows]), _i32(entry), table,
    )  # fmt: skip


def split_levels(data: SPAData) -> list[Level]:
    """The rows grouped by their number of biased annotations N: the first level has
    ``N + 1 <= LEVEL_BASE``, each further one up to ``LEVEL_RATIO`` times more. Every level
    gets polynomials of its own length (its largest N + 1), so that a few images with many
    annotations do not make every image pay for their terms. One level (all rows, as they
    are) when the rows are of one order of magnitude."""
    terms = np.asarray(data.counts).sum(axis=1) + 1
    ratio = np.maximum(terms / LEVEL_BASE, 1.0)
    level = np.ceil(np.log(ratio) / np.log(LEVEL_RATIO) - 1e-9).astype(np.int64)
    present = np.unique(level)
    if len(present) == 1:
        return [Level(np.arange(data.num_rows), data, int(terms.max()))]
    out = []
    for lev in present:
        rows = np.flatnonzero(level == lev)
        out.append(Level(rows, restrict(data, rows), int(terms[rows].max())))
    return out


# ----------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------


class Prepared(NamedTuple):
    """Validated inputs and their merged rows.

    Attributes:
        data: distinct rows (see :class:`SPAData`), not yet padded.
        inverse: ``(images,)`` each image's row in ``data``.
        counts, unbiased, proposals, probe: the validated inputs as NumPy arrays.
    """

    data: SPAData
    inverse: np.ndarray
    counts: np.ndarray
    unbiased: np.ndarray
    proposals: np.ndarray
    probe: np.ndarray

    @property
    def num_terms(self) -> int:
        """Polynomial terms: the largest number of biased annotations of an image, plus 1."""
        return int(self.counts.sum(axis=1).max()) + 1

    @property
    def calibration_images(self) -> int:
        """Images that identify delta: biased annotations plus unbiased ones, or a probe."""
        nb, nu = self.counts.sum(axis=1), self.unbiased.sum(axis=1)
        return int(np.sum((nb > 0) & ((nu > 0) | self.probe)))


def _host_counts(name: str, x) -> np.ndarray:
    """:func:`cleverjax._checks.as_counts` as a NumPy array. NumPy integer input is checked
    where it lies and kept without a copy when it is already int32: at 10^7 images each
    count matrix is 400 MB."""
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.integer) and x.ndim == 2:
        if x.size == 0 or x.min() >= 0:
            return x.astype(np.int32, copy=False)
    return np.asarray(_checks.as_counts(name, x))  # converts, or raises the usual error


def checked_counts(
    counts, proposals, unbiased, unbiased_name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(counts, proposals, unbiased counts)`` as NumPy arrays (zeros when
    ``unbiased`` is None); errors name the argument (``unbiased_name`` for the third)."""
    c = _host_counts("counts", counts)
    n, k = c.shape
    if k < 2:
        raise ValueError(f"`counts` must have at least 2 classes (columns); got {c.shape}")
    if n == 0:
        raise ValueError("`counts` must hold at least one image; got 0 rows")
    rho = _checks.as_int_array("proposals", proposals, ndim=1)
    _checks.check_shape("proposals", rho, (n,), hint="give one proposed class per image")
    rho = np.asarray(_checks.check_labels("proposals", rho, k))
    if unbiased is None:
        return c, rho, np.zeros_like(c)
    u = _host_counts(unbiased_name, unbiased)
    _checks.check_shape(
        unbiased_name,
        u,
        (n, k),
        hint="same shape as `counts`; zero rows for images without unbiased annotations",
    )
    return c, rho, u


def prepare(counts, proposals, unbiased_counts, probe) -> Prepared:
    """Validate the inputs of :func:`cleverjax.fit` and merge identical images."""
    counts, proposals, unbiased_counts, probe = local_arrays(
        (counts, proposals, unbiased_counts, probe)
    )
    c, rho, u = checked_counts(counts, proposals, unbiased_counts, "unbiased_counts")
    n = c.shape[0]
    if probe is None:
        pr = np.zeros(n, bool)
    else:
        pr = np.asarray(probe)
        if pr.shape != (n,):
            raise ValueError(f"`probe` must have shape ({n},); got {pr.shape}")
        if pr.dtype != bool:
            raise TypeError(f"`probe` must be a boolean array; got dtype {pr.dtype}")
    empty = (c.sum(axis=1) + u.sum(axis=1)) == 0
    if empty.any():
        raise ValueError(
            f"every image needs at least one annotation; {int(empty.sum())} "
            f"image(s) have none, first at index {int(np.argmax(empty))}. "
            f"Drop them before fitting"
        )
    data, inverse = compress(rho, c, u, pr)
    return Prepared(data, inverse, c, u, rho, pr)


# ----------------------------------------------------------------------------------
# Bucketed shapes and devices
# ----------------------------------------------------------------------------------


def bucket(size: int, multiple: int = 1, *, doubling_below: int = 0) -> int:
    """The smallest of 1, 2, 3, 4, 6, 8, 12, 16, ... (powers of 2 and 1.5 times them) that
    holds ``size``, rounded up to a multiple of ``multiple``: at most 50 % padding, and
    data sets of similar size share one compiled program. Below ``doubling_below`` only
    powers of 2 (at most 100 % padding, half as many distinct shapes): where an element
    costs little next to compiling a program for one more shape."""
    size = max(int(size), 1)
    power = 2 ** max(math.ceil(math.log2(size)) - 1, 0)
    middle = (3 * power // 2,) if 2 * power > doubling_below else ()
    steps = (power, *middle, 2 * power)
    best = next(b for b in steps if b >= size)
    return -(-best // multiple) * multiple


ROWS_DOUBLING_BELOW = 8192
"""Row counts up to this pad to powers of 2: a row costs a few multiply-adds per
evaluation, a new shape seconds of compilation (studies fit many similar data sets)."""

ENTRIES_DOUBLING_BELOW = 512
"""Entry counts up to this pad to powers of 2 (an entry costs a polynomial's Beta terms,
so larger tables keep the finer steps)."""


PAIRS_PAD_LIMIT = 128
"""(c, N) pairs pad to N + 1 (one shape for every data set with that N) up to this many;
beyond it to the bucket of the pairs present."""


def _pad_rows(x, size: int) -> np.ndarray:
    x = np.asarray(x)
    extra = size - x.shape[0]
    if extra == 0:
        return x
    return np.concatenate([x, np.broadcast_to(x[:1], (extra, *x.shape[1:]))], axis=0)


def pad(data: SPAData, multiple: int = 1) -> SPAData:
    """``data`` with rows, entries and pairs padded to bucketed sizes. Padding rows copy
    row 0 with weight 0; padding entries and pairs copy the first (no row points to them).
    The padded arrays are NumPy arrays (padding on the host costs no compiled programs);
    they go to devices in one transfer."""
    rows = bucket(data.num_rows, multiple, doubling_below=ROWS_DOUBLING_BELOW)
    fields = [_pad_rows(x, rows) for x in data[:6]]
    fields[4] = fields[4].copy()
    fields[4][data.num_rows :] = 0.0
    return SPAData(*fields, pad_table(data.table))


def pad_table(table: EntryTable) -> EntryTable:
    """``table`` with entries, pairs and basis keys padded as :func:`pad` pads them."""
    entries = bucket(table.num_entries, doubling_below=ENTRIES_DOUBLING_BELOW)
    # A level has at most N + 1 pairs per N; padding to that bound keeps data sets with
    # one N, whatever their counts, on one shape. Up to PAIRS_PAD_LIMIT only: each pair
    # costs a weight row of N + 1 terms per draw of delta, so a few images with N = 1000
    # would otherwise pay for a thousand rows.
    terms = int(np.max(np.asarray(table.pair_n), initial=0)) + 1
    pairs = bucket(max(table.pair_c.shape[0], min(terms, PAIRS_PAD_LIMIT)))
    bases = bucket(table.basis_entry.shape[0], doubling_below=ENTRIES_DOUBLING_BELOW)
    return EntryTable(
        *(_pad_rows(x, entries) for x in table[:8]),
        pair_c=_pad_rows(table.pair_c, pairs),
        pair_n=_pad_rows(table.pair_n, pairs),
        basis_entry=_pad_rows(table.basis_entry, bases),
    )


def pad_levels(data: SPAData, levels: list[Level], multiple: int = 1) -> SPAData:
    """The rows of ``data`` in their own order, padded as :func:`pad` pads them, with one
    entry table per level (each padded as :func:`pad` pads a table) as ``table``, a
    tuple: ``entry`` indexes the levels' entries one after another. The form that
    :func:`cleverjax.bayes.posterior.summaries` takes."""
    tables = tuple(pad_table(lev.data.table) for lev in levels)
    if len(levels) == 1:
        return pad(data, multiple)._replace(table=tables)
    entry = np.zeros(data.num_rows, np.int32)
    offset = 0
    for lev, table in zip(levels, tables):
        entry[lev.rows] = np.asarray(lev.data.entry) + offset
        offset += table.num_entries
    return pad(data._replace(entry=entry), multiple)._replace(table=tables)


def spans_processes(devices) -> bool:
    """Whether ``devices`` include another process's (several processes, global arrays)."""
    here = jax.process_index()
    return any(d.process_index != here for d in devices)


def replicate_on(devices, tree):
    """A copy of ``tree`` on every device of ``devices`` (one device: just there)."""
    devices = tuple(devices)
    if len(devices) == 1:
        return jax.device_put(tree, devices[0])
    mesh = Mesh(np.array(devices), ("rows",))
    if spans_processes(devices):
        return distributed.replicate(*tree, mesh=mesh)
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_rows(data: SPAData, devices) -> SPAData:
    """Spread the rows over ``devices`` (data parallel; the row count must be a multiple of
    the device count, see :func:`pad`). The entry table is replicated. When ``devices``
    span several processes, every process holds all rows and the result is made of global
    arrays (see :mod:`cleverjax.distributed`)."""
    devices = tuple(devices)
    if len(devices) == 1:
        return jax.device_put(data, devices[0])
    if spans_processes(devices):
        mesh = distributed.row_mesh(devices, "rows")
        (fields,) = distributed.global_rows(tuple(data[:-1]), mesh=mesh)
        (table,) = distributed.replicate(data.table, mesh=mesh)
        return SPAData(*fields, table)
    mesh = Mesh(np.array(devices), ("rows",))
    by_row = NamedSharding(mesh, PartitionSpec("rows"))
    replicated = NamedSharding(mesh, PartitionSpec())
    fields = [jax.device_put(x, by_row) for x in data[:-1]]
    table = jax.tree.map(lambda x: jax.device_put(x, replicated), data.table)
    return SPAData(*fields, table)


def numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded by a JAX key, for host-side choices of rows."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).astype(np.uint64).tolist())


def subsample(prep: Prepared, num_images: int, key) -> SPAData:
    """Rows for fitting the prior from at most ``num_images`` images: every calibration
    image (they carry delta's information) and a uniform random sample of the others,
    merged, each image counted once.

    The sample is not weighted up to stand for every image. The prior's estimate would
    barely move (only the calibration images' share of it changes), but an objective
    summed over millions of images is too large for float32 to resolve the few nats by
    which delta changes it: at 10^7 images the optimiser could not see delta move."""
    nb, nu = prep.counts.sum(axis=1), prep.unbiased.sum(axis=1)
    cal = (nb > 0) & ((nu > 0) | prep.probe)
    others = np.flatnonzero(~cal)
    take = max(num_images - int(cal.sum()), 1)
    rng = numpy_rng(key)
    chosen = np.sort(rng.choice(others, size=min(take, len(others)), replace=False))
    keep = np.concatenate([np.flatnonzero(cal), chosen])
    data, _ = compress(
        prep.proposals[keep], prep.counts[keep], prep.unbiased[keep], prep.probe[keep]
    )
    return data
