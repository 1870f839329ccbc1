"""Posterior summaries of every image given draws of the global parameters: exact
posterior means, credible intervals from exact draws, and the exact predictive moments of
each image's acceptance count, from which the posterior predictive check is computed.

Everything here streams over blocks of rows (bounded memory for any number of images) and
shards the blocks over devices. The delta-free part of the likelihood is computed once per
block; the part in ``t`` once per block and delta draw.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float, Int

from .._random import categorical, flat_draw, log_gamma, log_gamma_rows
from .data import SPAData, numpy_rng
from .likelihood import (
    DifficultyDelta,
    Prior,
    RowPart,
    TPart,
    _is_rho,
    _term_weights,
    dirichlet_index,
    entry_degree,
    entry_moments_t,
    pair_log_weights,
    pick_weights,
    posterior_mean_given,
    row_part,
    t_basis,
    t_part_given,
)

_BLOCK_ELEMENTS = 2**22
"""Rows per block are chosen so that a block's draws hold about this many numbers."""


class PosteriorPredictive(NamedTuple):
    """Posterior predictive check of the acceptance rate (share of biased annotations on
    the proposal).

    Given the globals, each image's replicated count on the proposal is
    ``Binomial(N, delta + (1* - delta) t)`` with ``t = p[rho]`` from the image's posterior;
    its mean and variance are exact (from the posterior moments of ``t``), and the total
    over independent images is normal to the central limit theorem's accuracy. The
    predictive distribution of the rate is the mixture of these normals over the draws of
    the globals; the p-value comes from it (with a continuity correction), and
    ``replicated`` holds draws from it.

    Attributes:
        observed: acceptance rate in the data.
        replicated: ``(replicates,)`` replicated acceptance rates drawn from the predictive
            distribution.
        p_value: two-sided posterior predictive p-value of ``observed``.
        observed_by_class: ``(classes,)`` acceptance rate per proposed class (NaN where a
            class is never proposed).
        replicated_by_class: ``(replicates, classes)``.
        expected: predictive mean of the acceptance rate.
        p_value_by_class: ``(classes,)`` two-sided p-value per proposed class (NaN where
            a class is never proposed).
    """

    observed: float
    replicated: Float[Array, " replicates"]
    p_value: float
    observed_by_class: Float[Array, " classes"]
    replicated_by_class: Float[Array, "replicates classes"]
    expected: float
    p_value_by_class: Float[Array, " classes"]


def stratified_index(all_deltas, num: int) -> np.ndarray:
    """Indices of ``num`` draws at evenly spaced quantiles of delta's draws."""
    values = np.asarray(all_deltas)
    order = np.argsort(values, kind="stable")
    quantiles = (np.arange(num) + 0.5) / num
    return order[(quantiles * values.shape[0]).astype(np.int64)]


# ----------------------------------------------------------------------------------
# Exact draws given the globals
# ----------------------------------------------------------------------------------


class EntryView(eqx.Module):
    """What the row-level steps need of every entry given one draw of the globals, for
    the entries of one or several levels (tables whose polynomials differ in length, see
    :func:`cleverjax.bayes.data.split_levels`) side by side: the rows of every level then
    share one program, whatever their polynomials' lengths.

    Attributes:
        log_t: ``(entries, comps)`` log of the integral over t (:class:`TPart`).
        moments: raw posterior moments of t, ``(entries, comps)`` each
            (:func:`entry_moments_t`; empty when not needed).
        a_t: ``(entries, comps)`` Beta prior of t.
        b_t: ``(entries, comps)``.
        u: ``(entries,)`` unbiased annotations on the proposal.
        rest: ``(entries,)`` the polynomial's degree plus M minus u.
        degree: ``(entries,)`` the polynomial's degree in t.
        cdf: ``(cells,)`` cumulative weights of the Beta terms of t, per entry and
            Dirichlet component, every entry's terms one after another (empty when no
            draws are needed).
        start: ``(entries,)`` where the entry's terms begin in ``cdf``.
        terms: ``(entries,)`` the entry's number of terms (its level's).
        max_terms: static; the most terms of any entry.
    """

    log_t: Float[Array, "entries comps"]
    moments: tuple[Array, ...]
    a_t: Float[Array, "entries comps"]
    b_t: Float[Array, "entries comps"]
    u: Float[Array, " entries"]
    rest: Float[Array, " entries"]
    degree: Float[Array, " entries"]
    cdf: Float[Array, " cells"]
    start: Int[Array, " entries"]
    terms: Int[Array, " entries"]
    max_terms: int = eqx.field(static=True)


def level_view(table, prior: Prior, t: TPart, moments=(), offset: int = 0, *, cdf: bool = True):
    """The :class:`EntryView` of one table's entries from their :class:`TPart`, its terms
    placed from ``offset`` in the cells of several tables (``cdf=False``: none)."""
    dtype = t.log_mix.dtype
    num, num_dcomps, num_terms = t.log_mix.shape
    degree = entry_degree(table, prior)
    cells = jnp.cumsum(_term_weights(t.log_mix), axis=-1).reshape(-1) if cdf else jnp.zeros(0)
    start = offset + jnp.arange(num, dtype=jnp.int32) * (num_dcomps * num_terms)
    return EntryView(
        log_t=t.log_t,
        moments=tuple(moments),
        a_t=t.a_t,
        b_t=t.b_t,
        u=table.u.astype(dtype),
        rest=(table.m + degree - table.u).astype(dtype),
        degree=degree.astype(dtype),
        cdf=cells.astype(dtype),
        start=start,
        terms=jnp.full((num,), num_terms, jnp.int32),
        max_terms=num_terms,
    )


def entry_view(tables, prior: Prior, bases, log_ws, order: int, *, cdf: bool = True) -> EntryView:
    """The entries of every table (``bases``: their :func:`t_basis`; ``log_ws``: each
    table's pair weights at one draw of the globals) in one :class:`EntryView`, with
    ``order`` raw moments of t; the tables' entries follow one another in the order
    given."""
    views, offset = [], 0
    for table, basis, log_w in zip(tables, bases, log_ws):
        t = t_part_given(table, prior, basis, pick_weights(log_w, table.rho, table.pair))
        moments = entry_moments_t(table, prior, t, order)
        views.append(level_view(table, prior, t, moments, offset, cdf=cdf))
        offset += math.prod(t.log_mix.shape) if cdf else 0
    if len(views) == 1:
        return views[0]
    names = [f.name for f in dataclasses.fields(EntryView) if f.name != "max_terms"]
    joined = {
        name: jax.tree.map(lambda *x: jnp.concatenate(x), *(getattr(v, name) for v in views))
        for name in names
    }
    return EntryView(**joined, max_terms=max(v.max_terms for v in views))


def _search(cdf: Array, first: Array, last: Array, u: Array, num_terms: int) -> Array:
    """Offset from ``first`` of the first entry above ``u`` in ``cdf[first:last + 1]``
    (binary search over at most ``num_terms`` entries, one gather of one number per step,
    so that no (draws, terms) array is formed)."""
    lo, hi = first, last
    for _ in range(max(1, math.ceil(math.log2(num_terms)))):
        mid = (lo + hi) // 2
        below = cdf[mid] <= u
        lo = jnp.where(below, mid + 1, lo)
        hi = jnp.where(below, hi, mid)
    return jnp.minimum(lo, last) - first  # u rounded up to the total: the last term


def _gamma_shapes(key, data: SPAData, prior: Prior, rows: RowPart, view: EntryView, num_draws):
    """The random steps of :func:`sample_p` before its Gamma draws: a component per draw,
    then a Beta term of t. Returns the ``(draws, rows, 2 + classes)`` Gamma shapes (t's
    Beta pair, then r's Dirichlet, 1 on the proposal) and each draw's component kind."""
    k_z, k_s = jax.random.split(key)
    dtype = view.a_t.dtype
    num_classes = data.counts.shape[1]
    z = categorical(k_z, view.log_t[data.entry] + rows.log_rest, shape=(num_draws,))
    entry = jnp.broadcast_to(data.entry[None, :], z.shape)
    zd = jnp.asarray(dirichlet_index(prior)[1], entry.dtype)[z]  # among the Dirichlet ones
    terms = view.terms[entry]
    first = view.start[entry] + zd * terms
    last = first + terms - 1
    u = flat_draw(jax.random.uniform, k_s, z.shape, dtype) * view.cdf[last]
    s = _search(view.cdf, first, last, u, view.max_terms)
    kind = jnp.asarray(prior.kind)[z]
    # A spike's one term (its t is set to 0 or 1 below; its Beta pair stays valid).
    s = jnp.where(kind == 0, s.astype(dtype), jnp.where(kind == 1, 0.0, view.degree[entry]))
    a = view.a_t[entry, z] + view.u[entry] + s
    b = view.b_t[entry, z] + view.rest[entry] - s
    is_rho = _is_rho(data.proposals, num_classes)[None]
    a_rest = rows.a_rest[jnp.arange(data.num_rows)[None, :], z]  # (draws, rows, K)
    shapes = jnp.concatenate([a[..., None], b[..., None], jnp.where(is_rho, 1.0, a_rest)], axis=-1)
    return shapes, kind


def _p_from_gammas(log_g, kind, is_rho):
    """p from the log-Gamma draws of :func:`_gamma_shapes`: t from its Beta pair (0 or 1
    for spike components), r from its Dirichlet (``is_rho`` marks the proposal)."""
    t_draw = jnp.exp(log_g[..., 0] - jnp.logaddexp(log_g[..., 0], log_g[..., 1]))
    t_draw = jnp.where(kind == 1, 0.0, jnp.where(kind == 2, 1.0, t_draw))
    r = jax.nn.softmax(jnp.where(is_rho, -jnp.inf, log_g[..., 2:]), axis=-1)
    return (1 - t_draw)[..., None] * r + t_draw[..., None] * is_rho.astype(log_g.dtype)


def sample_p(key, data: SPAData, prior: Prior, rows: RowPart, t: TPart, num_draws: int):
    """Exact draws of p from the posterior of each row given the global parameters:
    a component, then a Beta term of t, then t, then r = p_-rho / (1 - t) from its
    Dirichlet.

    The Beta draw of t and the Dirichlet draw of r both come from Gamma variables, drawn
    in log space (tiny concentrations underflow a plain Gamma draw to 0) and in one call
    of the bulk sampler ``log_gamma``, so that the program holds one copy of its loop."""
    k_shapes, k_g = jax.random.split(key)
    view = level_view(data.table, prior, t)
    shapes, kind = _gamma_shapes(k_shapes, data, prior, rows, view, num_draws)
    log_g = log_gamma(k_g, shapes, t.log_mix.dtype)
    return _p_from_gammas(log_g, kind, _is_rho(data.proposals, data.counts.shape[1])[None])


def sample_p_rows(keys, data: SPAData, prior: Prior, rows: RowPart, view: EntryView, num_draws):
    """``(rows, draws, classes)`` exact draws of p, each row from its own key: row ``i``
    gets what :func:`sample_p` gives it alone with ``keys[i]``, and all rows share one
    rejection loop for their Gamma draws. ``view``: the entries (:func:`level_view` of
    one table's :class:`TPart`, or :func:`entry_view` of several)."""

    def one(k, i):
        sel = i[None]
        part = RowPart(rows.log_rest[sel], rows.a_rest[sel])
        k_shapes, k_g = jax.random.split(k)
        shapes, kind = _gamma_shapes(k_shapes, data.take(sel), prior, part, view, num_draws)
        return k_g, shapes[:, 0], kind[:, 0]

    k_g, shapes, kind = jax.vmap(one)(keys, jnp.arange(data.num_rows))
    log_g = log_gamma_rows(k_g, shapes, view.a_t.dtype)  # (rows, draws, 2 + classes)
    return _p_from_gammas(log_g, kind, _is_rho(data.proposals, data.counts.shape[1])[:, None])


def sort_last(x: Array) -> Array:
    """``x`` sorted along its last axis (ascending; NaN not allowed) by a bitonic network:
    about log2(n)^2 / 2 passes of elementwise min and max over the whole array, padded
    with +inf to a power of two. For the short axes of many intervals this runs several
    times faster on CPU than ``jnp.sort``, whose comparator is called per comparison."""
    n = x.shape[-1]
    size = 1 << max(n - 1, 0).bit_length()
    lead = x.shape[:-1]
    if size > n:
        x = jnp.concatenate([x, jnp.full((*lead, size - n), jnp.inf, x.dtype)], axis=-1)
    k = 2
    while k <= size:
        j = k // 2
        while j >= 1:
            # Element i meets i + j within blocks of 2j; a block sorts ascending where
            # its start has bit k clear, descending otherwise.
            pairs = x.reshape(*lead, size // (2 * j), 2, j)
            a, b = pairs[..., 0, :], pairs[..., 1, :]
            small, large = jnp.minimum(a, b), jnp.maximum(a, b)
            up = jnp.asarray(((np.arange(size // (2 * j)) * 2 * j) & k) == 0)[:, None]
            first, second = jnp.where(up, small, large), jnp.where(up, large, small)
            x = jnp.stack([first, second], axis=-2).reshape(*lead, size)
            j //= 2
        k *= 2
    return x[..., :n]


SELECT_BELOW = 2**21
"""Draws (elements in all) below which :func:`equal_tailed` selects the order statistics
it needs with ``top_k`` instead of sorting: ``top_k`` compiles in a tenth of the time of
the sorting network but runs several times slower on large blocks."""


def equal_tailed(draws: Array, level: float, axis: int) -> tuple[Array, Array]:
    """Ends of the equal-tailed ``level`` interval of ``draws`` along ``axis``, as
    ``jnp.quantile`` computes them (linear interpolation between order statistics)."""
    x = jnp.moveaxis(draws, axis, -1)
    n = x.shape[-1]
    tail = (1 - level) / 2
    ends = [
        (q * (n - 1), math.floor(q * (n - 1)), math.ceil(q * (n - 1))) for q in (tail, 1 - tail)
    ]
    if x.size < SELECT_BELOW:
        smallest = -jax.lax.top_k(-x, ends[0][2] + 1)[0]  # ascending
        largest = jax.lax.top_k(x, n - ends[1][1])[0]  # descending

        def order(i: int) -> Array:
            return smallest[..., i] if i < smallest.shape[-1] else largest[..., n - 1 - i]
    else:
        ordered = sort_last(x)

        def order(i: int) -> Array:
            return ordered[..., i]

    def at(pos: float, lo: int, hi: int) -> Array:
        w = jnp.asarray(pos - lo, draws.dtype)
        return order(lo) * (1 - w) + order(hi) * w

    return at(*ends[0]), at(*ends[1])


# ----------------------------------------------------------------------------------
# Blocked, sharded summaries
# ----------------------------------------------------------------------------------


def row_block(rows_per_device: int, per_row: int, shared: int = 0) -> int:
    """Rows per block: a power of two that divides ``rows_per_device`` and keeps a
    block's arrays near ``_BLOCK_ELEMENTS`` numbers, or near ``shared``, the numbers
    every block computes whatever its size (the entries' part), when that is larger: then
    the shared work is not repeated for many small blocks."""
    cap = max(1, max(_BLOCK_ELEMENTS, shared) // max(per_row, 1))
    block = 1
    while block * 2 <= cap and rows_per_device % (block * 2) == 0:
        block *= 2
    return block


def map_rows(fn, data: SPAData, replicated, *, devices, per_row: int, shared: int = 0):
    """``fn(block_data, block_ids, replicated) -> pytree of (rows, ...)`` over blocks of
    rows (``block_ids``: the rows' indices), with ``lax.map`` on each device and
    ``shard_map`` across devices; ``data.num_rows`` must be a multiple of the device
    count. The entry table and ``replicated`` go to every block (see :func:`row_block`
    for ``per_row`` and ``shared``)."""
    num_dev = len(devices)
    block = row_block(data.num_rows // num_dev, per_row, shared)
    row_fields = (*data[:6], jnp.arange(data.num_rows, dtype=jnp.uint32))

    def per_device(fields, rep):
        local = fields[0].shape[0]
        blocked = jax.tree.map(lambda x: x.reshape(local // block, block, *x.shape[1:]), fields)

        def one(fs):
            return fn(SPAData(*fs[:6], rep[0]), fs[6], rep[1])

        out = jax.lax.map(one, blocked)
        return jax.tree.map(lambda o: o.reshape(local, *o.shape[2:]), out)

    rep = (data.table, replicated)
    if num_dev == 1:
        return per_device(row_fields, rep)
    mesh = Mesh(np.array(devices), ("rows",))
    sharded = jax.shard_map(
        per_device,
        mesh=mesh,
        in_specs=(PartitionSpec("rows"), PartitionSpec()),
        out_specs=PartitionSpec("rows"),
        check_vma=False,
    )
    return sharded(row_fields, rep)


class Summaries(NamedTuple):
    """Per row: posterior mean of p, the ends of its equal-tailed credible intervals, and
    the predictive mean and variance of the row's count on the proposal per draw of the
    globals."""

    mean: Float[Array, "rows classes"]
    lower: Float[Array, "rows classes"] | None
    upper: Float[Array, "rows classes"] | None
    accepted_mean: Float[Array, "rows draws"]
    accepted_var: Float[Array, "rows draws"]


def acceptance_coefficients(delta, one_star) -> tuple[Array, Array, Array]:
    """``(alpha, beta, gamma)`` of the acceptance probability as a polynomial in
    ``t = p[rho]``, ``A(t) = alpha + beta t + gamma t^2``: under SPA ``delta + (1* -
    delta) t``; with a :class:`DifficultyDelta` ``hard + (easy + 1* - 2 hard) t +
    (hard - easy) t^2``."""
    if isinstance(delta, DifficultyDelta):
        h, e = delta.hard, delta.easy
        return h, e + one_star - 2 * h, h - e
    return delta, one_star - delta, jnp.zeros_like(delta)


def moments_needed(deltas) -> int:
    """Raw moments of t that :func:`accepted_moments` needs: 2 under SPA, 4 when the
    acceptance probability is quadratic in t."""
    return 4 if isinstance(deltas, DifficultyDelta) else 2


def accepted_moments(data: SPAData, resp, moments, delta, one_star):
    """Predictive mean and variance of each row's count on the proposal, given the globals:
    ``c ~ Binomial(N, a)`` with ``a = A(t)`` (see :func:`acceptance_coefficients`) and
    ``t`` from the row's posterior (its component responsibilities ``resp`` and the
    entries' raw moments of t, :func:`moments_needed` of them)."""
    dtype = resp.dtype
    if not isinstance(delta, DifficultyDelta) and jnp.ndim(delta) > 0:  # one per class
        delta = delta[data.proposals]
    m = [jnp.sum(resp * x[data.entry], axis=-1) for x in moments]
    alpha, beta, gamma = acceptance_coefficients(delta, one_star)
    if len(m) == 2:  # linear in t
        a = alpha + beta * m[0]
        var_a = beta**2 * jnp.maximum(m[1] - m[0] ** 2, 0.0)
    else:
        a = alpha + beta * m[0] + gamma * m[1]
        var_a = jnp.maximum(
            beta**2 * (m[1] - m[0] ** 2)
            + gamma**2 * (m[3] - m[1] ** 2)
            + 2 * beta * gamma * (m[2] - m[0] * m[1]),
            0.0,
        )
    n = jnp.sum(data.counts, axis=1).astype(dtype)
    return n * a, n * a * (1 - a) + n * (n - 1) * var_a


_SUMMARIES_STATIC = ("num_terms", "level", "per_delta", "devices", "key_impl")


@functools.partial(jax.jit, static_argnames=_SUMMARIES_STATIC)
def summaries(
    key_data,
    data: SPAData,
    prior: Prior,
    deltas: Array | DifficultyDelta,
    stars: Array,
    *,
    num_terms: tuple[int, ...],
    level: float,
    per_delta: int,
    devices: tuple,
    key_impl: str = "threefry2x32",
) -> Summaries:
    """Posterior mean of p (averaged over the draws of the globals) and equal-tailed
    credible intervals from ``per_delta`` exact draws per draw of the globals (none, and
    ``lower`` and ``upper`` ``None``, when ``per_delta`` is 0).

    ``data.table`` is a tuple of entry tables, one per level of annotation counts (see
    :func:`cleverjax.bayes.data.pad_levels`), whose polynomials have ``num_terms`` terms;
    ``data.entry`` indexes their entries one after another. Only the entries' part
    depends on the polynomials' length: the rows of every level go through one program.

    The weights ``W_s`` are computed once per delta draw and the delta-free part once per
    row, and the predictive moments of the acceptance counts come from the same pass.
    Every row draws from its own key (the key folded with the row's index), so the
    results do not depend on blocking or on the number of devices. The key comes as its
    data (``key_impl`` names its implementation), to be copied to every device like the
    other inputs.
    """
    key = jax.random.wrap_key_data(key_data, impl=key_impl)
    # Per (c, N) pair, not per entry: a large N makes the entries many times the pairs.
    log_ws = tuple(
        jax.lax.map(
            lambda ds, table=table, n=n: pair_log_weights(
                table.pair_c, table.pair_n, ds[0], ds[1], n
            ),
            (deltas, stars),
        )
        for table, n in zip(data.table, num_terms)
    )  # each (draws, [classes,] pairs, terms)
    num_classes = data.counts.shape[1]

    def block_fn(block: SPAData, ids, rep):
        log_ws, base, prior, deltas, stars = rep
        rows = row_part(block, prior)
        # delta-free: once for every draw
        bases = [t_basis(table, prior, n) for table, n in zip(block.table, num_terms)]

        def per_draw(args):
            log_w, k, delta, star = args
            view = entry_view(
                block.table, prior, bases, log_w, moments_needed(delta), cdf=per_delta > 0
            )
            resp = jax.nn.softmax(view.log_t[block.entry] + rows.log_rest, axis=-1)
            mean = posterior_mean_given(block, rows, None, view.moments[0], resp)
            acc = accepted_moments(block, resp, view.moments, delta, star)
            if not per_delta:  # no intervals asked for
                return mean, acc, None
            keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(ids)
            return mean, acc, sample_p_rows(keys, block, prior, rows, view, per_delta)

        keys = jax.random.split(base, stars.shape[0])
        means, acc, draws = jax.lax.map(per_draw, (log_ws, keys, deltas, stars))
        lower = upper = None
        if per_delta:
            draws = jnp.moveaxis(draws, 0, 1).reshape(block.num_rows, -1, num_classes)
            lower, upper = equal_tailed(draws, level, axis=1)
        return Summaries(jnp.mean(means, axis=0), lower, upper, acc[0].T, acc[1].T)

    num_draws = stars.shape[0]
    per_row = num_draws * max(per_delta, 1) * num_classes
    comps = prior.weights.shape[1]
    shared = sum(
        num_draws * table.num_entries * comps * n for table, n in zip(data.table, num_terms)
    )
    return map_rows(
        block_fn,
        data,
        (log_ws, key, prior, deltas, stars),
        devices=devices,
        per_row=per_row,
        shared=shared,
    )


@functools.cache
def summaries_program(options: tuple = ()):
    """:func:`summaries` compiled with XLA compiler options given as pairs (see
    :func:`cleverjax._cache.compile_options`); no options: :func:`summaries` itself."""
    if not options:
        return summaries
    return jax.jit(
        summaries.__wrapped__, static_argnames=_SUMMARIES_STATIC, compiler_options=dict(options)
    )


# ----------------------------------------------------------------------------------
# Posterior predictive check
# ----------------------------------------------------------------------------------


def _two_sided(observed: float, mean: np.ndarray, var: np.ndarray) -> float:
    """Two-sided p-value of ``observed`` under a uniform mixture of normals (counts, with
    a continuity correction of half a count)."""
    from scipy.special import ndtr

    sd = np.sqrt(np.maximum(var, 1e-12))
    upper = np.mean(ndtr((mean - observed + 0.5) / sd))
    lower = np.mean(ndtr((observed + 0.5 - mean) / sd))
    return float(min(1.0, 2 * min(upper, lower)))


def acceptance_check(
    key,
    proposals: np.ndarray,
    accepted: np.ndarray,
    num: np.ndarray,
    weight: np.ndarray,
    accepted_mean: np.ndarray,
    accepted_var: np.ndarray,
    *,
    num_classes: int,
    num_replicates: int,
) -> PosteriorPredictive:
    """The posterior predictive check of the acceptance rate from the rows' predictive
    moments (see :class:`PosteriorPredictive`).

    Args:
        key: PRNG key for the ``replicated`` draws.
        proposals, accepted, num, weight: per row: proposal, observed count on it, biased
            annotations N, and how many images share the row.
        accepted_mean, accepted_var: ``(rows, draws)`` predictive moments per draw of the
            globals (:class:`Summaries`).
    """
    w = weight.astype(np.float64)

    def per_class(x) -> np.ndarray:
        """Weighted sum over the rows of each proposed class: ``(classes,)`` for ``(rows,)``,
        ``(classes, draws)`` for ``(rows, draws)`` (one column at a time: no float64 copy
        of the whole array)."""
        x = np.asarray(x)
        cols = x.reshape(x.shape[0], -1)
        out = [
            np.bincount(proposals, w * cols[:, j].astype(np.float64), minlength=num_classes)
            for j in range(cols.shape[1])
        ]
        return np.stack(out, axis=1).reshape(num_classes, *x.shape[1:])

    # Per proposed class: annotations, observed count, and per draw the predictive moments.
    sizes, observed = per_class(num), per_class(accepted)
    mean, var = per_class(accepted_mean), per_class(accepted_var)  # (classes, draws)
    rng = numpy_rng(key)
    pick = rng.integers(mean.shape[1], size=num_replicates)
    z = rng.standard_normal((num_replicates, num_classes))
    # Classes are independent given the globals: a replicate of the overall count is the
    # sum of the per-class replicates under the same draw.
    replicated = mean[:, pick].T + np.sqrt(var[:, pick]).T * z  # (replicates, classes)
    total = max(float(sizes.sum()), 1.0)
    seen = sizes > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rep_by_class = np.where(seen, replicated / sizes, np.nan)
        obs_by_class = np.where(seen, observed / sizes, np.nan)
    p_by_class = np.array(
        [_two_sided(o, m, v) if ok else np.nan for o, m, v, ok in zip(observed, mean, var, seen)]
    )
    return PosteriorPredictive(
        observed=float(observed.sum()) / total,
        replicated=jnp.asarray(replicated.sum(axis=1) / total),
        p_value=_two_sided(float(observed.sum()), mean.sum(axis=0), var.sum(axis=0)),
        observed_by_class=jnp.asarray(obs_by_class),
        replicated_by_class=jnp.asarray(rep_by_class),
        expected=float(np.mean(mean.sum(axis=0))) / total,
        p_value_by_class=jnp.asarray(p_by_class),
    )
