"""Posterior summaries of every image given draws of the global parameters: exact
posterior means, credible intervals from exact draws, and the posterior predictive check.

Everything here streams over blocks of rows (bounded memory for any number of images) and
shards the blocks over devices. The delta-free part of the likelihood is computed once per
block; the part in ``t`` once per block and delta draw.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Float

from .._spa import simulate_counts
from .data import SPAData
from .likelihood import (
    Prior,
    RowPart,
    TPart,
    _is_rho,
    _term_weights,
    entry_mean_t,
    log_marginal,
    posterior_mean_given,
    row_part,
    t_part,
    table_log_weights,
)

_BLOCK_ELEMENTS = 2**22
"""Rows per block are chosen so that a block's draws hold about this many numbers."""


class PosteriorPredictive(NamedTuple):
    """Posterior predictive check of the acceptance rate (share of biased annotations on
    the proposal), replicated with the SPA engine from posterior draws.

    Attributes:
        observed: acceptance rate in the data.
        replicated: ``(replicates,)`` acceptance rates of data simulated from the fit.
        p_value: two-sided posterior predictive p-value of ``observed``.
        observed_by_class: ``(classes,)`` acceptance rate per proposed class (NaN where a
            class is never proposed).
        replicated_by_class: ``(replicates, classes)``.
    """

    observed: float
    replicated: Float[Array, " replicates"]
    p_value: float
    observed_by_class: Float[Array, " classes"]
    replicated_by_class: Float[Array, "replicates classes"]


def stratified(all_deltas: Array, all_stars: Array, num: int) -> tuple[Array, Array]:
    """``num`` draws of (delta, 1*) at evenly spaced quantiles of delta's draws."""
    order = jnp.argsort(all_deltas)
    quantiles = (np.arange(num) + 0.5) / num
    pick = order[(quantiles * all_deltas.shape[0]).astype(np.int32)]
    return all_deltas[pick], all_stars[pick]


# ----------------------------------------------------------------------------------
# Exact draws given the globals
# ----------------------------------------------------------------------------------


def _search(cdf: Array, u: Array) -> Array:
    """Index of the first cdf entry above ``u``, per row of ``cdf`` (binary search with
    gathers, so that no (rows, terms) array is formed per draw)."""
    num_terms = cdf.shape[-1]
    lo = jnp.zeros(u.shape, jnp.int32)
    hi = jnp.full(u.shape, num_terms - 1, jnp.int32)
    for _ in range(max(1, math.ceil(math.log2(num_terms)))):
        mid = (lo + hi) // 2
        below = jnp.take_along_axis(cdf, mid[..., None], axis=-1)[..., 0] <= u
        lo = jnp.where(below, mid + 1, lo)
        hi = jnp.where(below, hi, mid)
    return lo


def sample_t(key, data: SPAData, prior: Prior, rows: RowPart, t: TPart, num_draws: int):
    """Exact draws of (component, t = p[rho]) from each row's posterior."""
    k_z, k_s, k_ta, k_tb = jax.random.split(key, 4)
    dtype = t.log_mix.dtype
    z = jax.random.categorical(
        k_z, log_marginal(data, rows, t), axis=-1, shape=(num_draws, data.num_rows)
    )
    entry = jnp.broadcast_to(data.entry[None, :], z.shape)
    cdf = jnp.cumsum(_term_weights(t.log_mix), axis=-1)  # (entries, comps, terms)
    u = jax.random.uniform(k_s, z.shape, dtype) * cdf[entry, z, -1]
    s = jnp.minimum(_search(cdf[entry, z], u), t.log_mix.shape[-1] - 1).astype(dtype)
    table = data.table
    a = t.a_t[entry, z] + table.u[entry].astype(dtype) + s
    b = t.b_t[entry, z] + (table.m + table.n - table.u)[entry].astype(dtype) - s
    # Gamma draws in log space: tiny concentrations underflow a plain gamma draw to 0.
    log_ga = jax.random.loggamma(k_ta, a, dtype=dtype)
    log_gb = jax.random.loggamma(k_tb, b, dtype=dtype)
    draw = jnp.exp(log_ga - jnp.logaddexp(log_ga, log_gb))
    kind = jnp.asarray(prior.kind)[z]
    return z, jnp.where(kind == 1, 0.0, jnp.where(kind == 2, 1.0, draw))


def sample_p(key, data: SPAData, prior: Prior, rows: RowPart, t: TPart, num_draws: int):
    """Exact draws of p from the posterior of each row given the global parameters:
    a component, then a Beta term of t, then t, then r from its Dirichlet."""
    dtype = t.log_mix.dtype
    k_t, k_r = jax.random.split(key)
    z, t_draw = sample_t(k_t, data, prior, rows, t, num_draws)
    is_rho = _is_rho(data.proposals, data.counts.shape[1])
    a_rest = rows.a_rest[jnp.arange(data.num_rows)[None, :], z]  # (draws, rows, K)
    log_g = jax.random.loggamma(k_r, jnp.where(is_rho[None], 1.0, a_rest), dtype=dtype)
    r = jax.nn.softmax(jnp.where(is_rho[None], -jnp.inf, log_g), axis=-1)
    return (1 - t_draw)[..., None] * r + t_draw[..., None] * is_rho[None].astype(dtype)


# ----------------------------------------------------------------------------------
# Blocked, sharded summaries
# ----------------------------------------------------------------------------------


def row_block(rows_per_device: int, per_row: int) -> int:
    """Rows per block: a power of two that divides ``rows_per_device`` and keeps a
    block's arrays near ``_BLOCK_ELEMENTS`` numbers."""
    cap = max(1, _BLOCK_ELEMENTS // max(per_row, 1))
    block = 1
    while block * 2 <= cap and rows_per_device % (block * 2) == 0:
        block *= 2
    return block


def map_rows(fn, data: SPAData, replicated, *, devices, per_row: int):
    """``fn(block_data, block_ids, replicated) -> pytree of (rows, ...)`` over blocks of
    rows (``block_ids``: the rows' indices), with ``lax.map`` on each device and
    ``shard_map`` across devices; ``data.num_rows`` must be a multiple of the device
    count. The entry table and ``replicated`` go to every block."""
    num_dev = len(devices)
    block = row_block(data.num_rows // num_dev, per_row)
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


def sample_p_rows(keys, data: SPAData, prior: Prior, rows: RowPart, t: TPart, num_draws: int):
    """``(rows, draws, classes)`` exact draws of p, each row from its own key."""

    def one(k, i):
        sel = i[None]
        part = RowPart(rows.log_rest[sel], rows.a_rest[sel])
        return sample_p(k, data.take(sel), prior, part, t, num_draws)[:, 0]

    return jax.vmap(one)(keys, jnp.arange(data.num_rows))


class Summaries(NamedTuple):
    """Per row: posterior mean of p and the ends of its equal-tailed credible intervals."""

    mean: Float[Array, "rows classes"]
    lower: Float[Array, "rows classes"]
    upper: Float[Array, "rows classes"]


@functools.partial(
    jax.jit, static_argnames=("num_terms", "level", "per_delta", "devices", "key_impl")
)
def summaries(
    key_data,
    data: SPAData,
    prior: Prior,
    deltas: Array,
    stars: Array,
    *,
    num_terms: int,
    level: float,
    per_delta: int,
    devices: tuple,
    key_impl: str = "threefry2x32",
) -> Summaries:
    """Posterior mean of p (averaged over the draws of the globals) and equal-tailed
    credible intervals from ``per_delta`` exact draws per draw of the globals.

    The weights ``W_s`` are computed once per delta draw and the delta-free part once per
    row; every row draws from its own key (the key folded with the row's index), so the
    results do not depend on blocking or on the number of devices. The key comes as its
    data (``key_impl`` names its implementation), to be copied to every device like the
    other inputs.
    """
    key = jax.random.wrap_key_data(key_data, impl=key_impl)
    log_ws = jax.lax.map(
        lambda ds: table_log_weights(data.table, ds[0], ds[1], num_terms), (deltas, stars)
    )  # (draws, entries, terms)
    num_classes = data.counts.shape[1]
    tail = (1 - level) / 2

    def block_fn(block: SPAData, ids, rep):
        log_ws, base, prior = rep
        rows = row_part(block, prior)

        def per_draw(args):
            log_w, k = args
            t = t_part(block.table, prior, log_w)
            mean = posterior_mean_given(block, rows, t, entry_mean_t(block.table, prior, t))
            keys = jax.vmap(lambda i: jax.random.fold_in(k, i))(ids)
            return mean, sample_p_rows(keys, block, prior, rows, t, per_delta)

        keys = jax.random.split(base, log_ws.shape[0])
        means, draws = jax.lax.map(per_draw, (log_ws, keys))  # (D, B, K), (D, B, d, K)
        draws = jnp.moveaxis(draws, 0, 1).reshape(block.num_rows, -1, num_classes)
        lower, upper = jnp.quantile(draws, jnp.array([tail, 1 - tail]), axis=1)
        return Summaries(jnp.mean(means, axis=0), lower, upper)

    per_row = deltas.shape[0] * per_delta * num_classes
    return map_rows(block_fn, data, (log_ws, key, prior), devices=devices, per_row=per_row)


# ----------------------------------------------------------------------------------
# Posterior predictive check
# ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("num_terms", "num_replicates"))
def _replicate_accepted(
    key, data: SPAData, prior: Prior, deltas, stars, num, *, num_terms: int, num_replicates: int
):
    """``(replicates, images)`` replicated counts on the proposal: for every image an
    independent posterior draw of t = p[rho], then the SPA engine on the two-class
    distribution (t, 1 - t) with the proposal on the first class, which draws exactly
    Binomial(N, delta + (1* - delta) t). Replicate ``r`` uses delta draw ``r mod D``."""
    rows = row_part(data, prior)
    num_draws = deltas.shape[0]

    def one(args):
        r, k = args
        i = r % num_draws
        k_t, k_sim = jax.random.split(k)
        log_w = table_log_weights(data.table, deltas[i], stars[i], num_terms)
        _, t = sample_t(k_t, data, prior, rows, t_part(data.table, prior, log_w), 1)
        two_class = jnp.stack([t[0], 1 - t[0]], axis=1)
        counts = simulate_counts(
            k_sim,
            two_class,
            jnp.zeros(data.num_rows, jnp.int32),
            num_annotations=num,
            delta=deltas[i],
            one_star=stars[i],
        )
        return counts[:, 0]

    keys = jax.random.split(key, num_replicates)
    return jax.lax.map(one, (jnp.arange(num_replicates), keys))


def _rates(c_rho: np.ndarray, num: np.ndarray, proposals: np.ndarray, k: int):
    """Acceptance rate overall and per proposed class (NaN for classes never proposed)."""
    per_class = np.bincount(proposals, weights=num, minlength=k)
    by_class = np.bincount(proposals, weights=c_rho, minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        by_class = np.where(per_class > 0, by_class / per_class, np.nan)
    return float(c_rho.sum() / max(num.sum(), 1)), by_class


def ppc(
    key,
    data: SPAData,
    image_rows: np.ndarray,
    counts: np.ndarray,
    proposals: np.ndarray,
    prior: Prior,
    deltas,
    stars,
    *,
    num_terms: int,
    num_replicates: int,
) -> PosteriorPredictive:
    """Posterior predictive check of the acceptance rate on the images ``image_rows``
    (each image's row in ``data``; ``counts`` and ``proposals`` are those images')."""
    k = counts.shape[1]
    num = counts.sum(axis=1)
    images = data.take(jnp.asarray(image_rows, jnp.int32))
    reps = np.asarray(
        _replicate_accepted(
            key,
            images,
            prior,
            deltas,
            stars,
            jnp.asarray(num, jnp.int32),
            num_terms=num_terms,
            num_replicates=num_replicates,
        ),
        np.float64,
    )
    obs, obs_cls = _rates(counts[np.arange(len(num)), proposals], num, proposals, k)
    rep, rep_cls = zip(*(_rates(r, num, proposals, k) for r in reps))
    rep_arr = np.asarray(rep)
    p_value = float(min(1.0, 2 * min(np.mean(rep_arr >= obs), np.mean(rep_arr <= obs))))
    return PosteriorPredictive(
        obs, jnp.asarray(rep_arr), p_value, jnp.asarray(obs_cls), jnp.asarray(np.stack(rep_cls))
    )
