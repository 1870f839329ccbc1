"""Counter-based random numbers, exact binomial/multinomial samplers and a bulk log-Gamma
sampler.

Every random number is a pure function of ``(key, stream, lane, counter)`` through
Threefry-2x32, the generator behind ``jax.random``. An annotation's uniform depends on
its image index and annotation index only, so results do not depend on how the image
axis is chunked or sharded over devices.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry_2x32
from jaxtyping import Array, ArrayLike, Bool, Float, Int, Key, PRNGKeyArray, Real, Shaped, UInt32

KeyData = UInt32[Array, "2"]


def key_data(key: PRNGKeyArray | Shaped[Array, 2], name: str = "key") -> KeyData:
    """Threefry key words of ``key``: a new-style key (any impl) or a legacy uint32[2] key."""
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"`{name}` must be a single PRNG key; got a batch of shape "
                f"{key.shape}. Use jax.vmap to batch over keys"
            )
        if str(jax.random.key_impl(key)) == "threefry2x32":
            return jax.random.key_data(key)
        return jax.random.bits(key, (2,), jnp.uint32)
    if key.shape != (2,) or key.dtype != jnp.uint32:
        raise TypeError(
            f"`{name}` must be a PRNG key from jax.random.key(seed) (or a legacy "
            f"uint32[2] key); got dtype {key.dtype} and shape {key.shape}"
        )
    return key


def as_typed_key(key: PRNGKeyArray | Shaped[Array, 2], name: str = "key") -> PRNGKeyArray:
    """A new-style key for ``jax.random``, whatever ``jax_default_prng_impl`` is.

    A typed key (any implementation) passes through unchanged. Legacy ``uint32[2]`` data is
    wrapped as Threefry-2x32 explicitly: ``jax.random.wrap_key_data`` without ``impl``
    would read it with the default implementation, which need not be Threefry.

    Args:
        key: a single key from ``jax.random.key(seed)`` or a legacy ``uint32[2]`` key.
        name: the argument's name, for error messages.

    Returns:
        A scalar typed PRNG key.

    Raises:
        ValueError: for a batch of keys.
        TypeError: for anything that is not a key.
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(
                f"`{name}` must be a single PRNG key; got a batch of shape "
                f"{key.shape}. Use jax.vmap to batch over keys"
            )
        return key
    return jax.random.wrap_key_data(key_data(key, name), impl="threefry2x32")


def fold(kd: KeyData, *data: int | Array) -> KeyData:
    """Derive an independent key for a sub-stream (like ``jax.random.fold_in``)."""
    for d in data:
        kd = threefry_2x32(kd, jnp.stack([jnp.uint32(0), jnp.asarray(d, jnp.uint32)]))
    return kd


def random_words(
    kd: KeyData, lane: UInt32[Array, ...], counter: UInt32[Array, ...] | int
) -> tuple[UInt32[Array, ...], UInt32[Array, ...]]:
    """Two independent uint32 words for each (lane, counter) pair (shapes broadcast)."""
    counter = jnp.asarray(counter, jnp.uint32)
    shape = jnp.broadcast_shapes(lane.shape, counter.shape)
    lane = jnp.broadcast_to(lane, shape)
    counter = jnp.broadcast_to(counter, shape)
    size = lane.size
    out = threefry_2x32(kd, jnp.concatenate([lane.ravel(), counter.ravel()]))
    return out[:size].reshape(lane.shape), out[size:].reshape(lane.shape)


def to_unit(bits: UInt32[Array, "*s"], dtype) -> Float[Array, "*s"]:
    """Uniform on [0, 1) from 32 random bits (24 of them in float32, all 32 in float64)."""
    if jnp.dtype(dtype) == jnp.float64:
        return bits.astype(jnp.float64) * (2.0**-32)
    return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


_STIRLING_TABLE = np.array(
    [
        0.08106146679532726,
        0.04134069595540929,
        0.02767792568499834,
        0.02079067210376509,
        0.01664469118982119,
        0.01387612882307075,
        0.01189670994589177,
        0.01041126526197209,
        0.009255462182712733,
        0.008330563433362871,
    ]
)


def _stirling_tail(k: Array) -> Array:
    """log(k!) minus its Stirling approximation (tabulated for k < 10)."""
    kp1sq = (k + 1) * (k + 1)
    approx = (1.0 / 12 - (1.0 / 360 - 1.0 / 1260 / kp1sq) / kp1sq) / (k + 1)
    table = jnp.asarray(_STIRLING_TABLE, k.dtype)[jnp.clip(k, 0, 9).astype(jnp.int32)]
    return jnp.where(k <= 9, table, approx)


_INVERSION_LIMIT = 10.0  # BTRS needs n * min(p, 1 - p) >= 10; inversion below.


def binomial(
    kd: KeyData, lane: UInt32[Array, " lanes"], n: Int[Array, " lanes"], p: Float[Array, " lanes"]
) -> Int[Array, " lanes"]:
    """Exact Binomial(n, p) draws, one per lane.

    Inversion by sequential search when ``n * min(p, 1-p) < 10`` and Hörmann's BTRS
    (transformed rejection with squeeze) otherwise. Each lane's draw depends only on
    ``(kd, lane)``, whatever else is in the batch.

    References:
        W. Hörmann, "The generation of binomial random variates", J. Statist. Comput.
        Simul. 46 (1993).
    """
    dtype = p.dtype
    nf = n.astype(dtype)
    flip = p > 0.5
    q = jnp.where(flip, 1 - p, p)
    small = nf * q < _INVERSION_LIMIT

    # Inversion: walk the CDF from 0 with the pmf recurrence.
    u = to_unit(random_words(kd, lane, 0)[0], dtype)
    q_inv = jnp.where(small, q, 0)
    ratio = q_inv / (1 - q_inv)
    f0 = jnp.exp(nf * jnp.log1p(-q_inv))

    def inv_go(k, cdf):
        return small & (u > cdf) & (k < nf)

    def inv_cond(state):
        k, _, cdf = state
        return jnp.any(inv_go(k, cdf))

    def inv_body(state):
        k, f, cdf = state
        go = inv_go(k, cdf)
        f_next = f * (nf - k) / (k + 1) * ratio
        return jnp.where(go, k + 1, k), jnp.where(go, f_next, f), jnp.where(go, cdf + f_next, cdf)

    zero = jnp.zeros_like(nf)
    k_inv, _, _ = lax.while_loop(inv_cond, inv_body, (zero, f0, f0))

    # BTRS on the other lanes (dummy parameters where inversion was used).
    qb = jnp.where(small, 0.5, q)
    nb = jnp.where(small, 100.0, nf).astype(dtype)
    spq = jnp.sqrt(nb * qb * (1 - qb))
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * qb
    c = nb * qb + 0.5
    v_r = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    odds = qb / (1 - qb)
    mode = jnp.floor((nb + 1) * qb)
    log_h = (
        (mode + 0.5) * jnp.log((mode + 1) / (odds * (nb - mode + 1)))
        + _stirling_tail(mode)
        + _stirling_tail(nb - mode)
    )

    def bt_cond(state):
        _, _, done = state
        return jnp.any(~done)

    def bt_body(state):
        t, k, done = state
        w0, w1 = random_words(kd, lane, t + 1)
        uu = to_unit(w0, dtype) - 0.5
        vv = to_unit(w1, dtype)
        us = 0.5 - jnp.abs(uu)
        safe_us = jnp.maximum(us, jnp.finfo(dtype).tiny)
        kk = jnp.floor((2 * a / safe_us + b) * uu + c)
        in_range = (kk >= 0) & (kk <= nb) & (us > 0)
        quick = (us >= 0.07) & (vv <= v_r)
        kc = jnp.clip(kk, 0, nb)
        log_v = jnp.log(vv * alpha / (a / (safe_us * safe_us) + b))
        bound = (
            log_h
            + (nb + 1) * jnp.log((nb - mode + 1) / (nb - kc + 1))
            + (kc + 0.5) * jnp.log(odds * (nb - kc + 1) / (kc + 1))
            - _stirling_tail(kc)
            - _stirling_tail(nb - kc)
        )
        accept = in_range & (quick | (log_v <= bound))
        k = jnp.where(accept & ~done, kc, k)
        return t + 1, k, done | accept

    _, k_bt, _ = lax.while_loop(bt_cond, bt_body, (jnp.uint32(0), zero, small))
    k = jnp.where(small, k_inv, k_bt)
    return jnp.where(flip, nf - k, k).astype(jnp.int32)


def multinomial(
    kd: KeyData,
    lane: UInt32[Array, " lanes"],
    n: Int[Array, " lanes"],
    probs: Float[Array, "lanes classes"],
) -> Int[Array, "lanes classes"]:
    """Exact Multinomial(n, probs) draws by conditional binomials, O(classes) per lane.

    Rows of ``probs`` must be non-negative with a positive sum; they are normalised here.
    The last class with positive mass receives the remainder, so rows always sum to ``n``.
    """
    num_classes = probs.shape[-1]
    tail = jnp.cumsum(probs[:, ::-1], axis=1)[:, ::-1]
    cond = jnp.clip(jnp.where(tail > 0, probs / jnp.where(tail > 0, tail, 1), 0), 0, 1)

    def step(remaining, xs):
        k, q = xs
        draw = binomial(fold(kd, k), lane, remaining, q)
        return remaining - draw, draw

    _, draws = lax.scan(step, n, (jnp.arange(num_classes, dtype=jnp.uint32), cond.T))
    return draws.T


def flat_draw(sample, key: PRNGKeyArray, shape: tuple[int, ...], dtype) -> Array:
    """``sample(key, shape, dtype)`` (``jax.random.normal``, ``uniform``, ``gumbel``...)
    drawn as one vector and reshaped: the same numbers from a smaller program. For a
    shape of several dimensions, partitionable Threefry builds its counters dimension by
    dimension, which on CPU takes about four times as long to compile."""
    return sample(key, (math.prod(shape),), dtype).reshape(shape)


def categorical(key: PRNGKeyArray, logits: Array, shape: tuple[int, ...] = ()) -> Array:
    """``jax.random.categorical(key, logits, axis=-1, shape=(*shape, *batch))``, the same
    draws (Gumbel-max over the last axis), from one flat vector of Gumbel variables (see
    :func:`flat_draw`): a multi-dimensional draw of them compiles several times slower."""
    full = (*shape, *logits.shape)
    gumbel = flat_draw(jax.random.gumbel, key, full, logits.dtype)
    return jnp.argmax(gumbel + logits.reshape((1,) * len(shape) + logits.shape), axis=-1)


def to_normal(bits: UInt32[Array, "*s"], dtype) -> Float[Array, "*s"]:
    """Standard normal from 32 random bits by inversion, as ``jax.random.normal`` does: a
    uniform on a grid symmetric in (-1, 1), through ``sqrt(2) erfinv``."""
    step = 2.0**-32 if jnp.dtype(dtype) == jnp.float64 else 2.0**-24
    v = 2 * to_unit(bits, dtype) - 1 + jnp.asarray(step, dtype)
    return jnp.sqrt(jnp.asarray(2, dtype)) * lax.erf_inv(v)


_LOOP_TRIES = 4
"""Tries per pending element in each pass of the loop: a pass then leaves an element
unaccepted with probability below 1e-5, and costs little as the buffer is small."""
_BOOST_COUNTER = 2**32 - 1
"""Counter of the uniform that boosts shapes below 1 (tries count up from 0)."""


def _tries(
    kd: KeyData,
    lane: UInt32[Array, " n"],
    first: int | UInt32[Array, ""],
    d: Float[Array, " n"],
    tries: int,
) -> tuple[Float[Array, " n"], Bool[Array, " n"]]:
    """Marsaglia–Tsang tries ``first .. first + tries - 1`` of each element (its lane),
    all drawn at once from one Threefry call: the log of the first accepted
    Gamma(d + 1/3) draw (arbitrary where none was) and whether any was.

    Try ``j`` of lane ``l`` uses the two words of counter ``(l, j)``: a normal and a
    uniform. Each element's tries are a fixed sequence of its key and lane, whichever
    batch it is drawn in."""
    dtype = d.dtype
    c = lax.rsqrt(9 * d)
    counter = jnp.asarray(first, jnp.uint32) + jnp.arange(tries, dtype=jnp.uint32)[:, None]
    w_x, w_u = random_words(kd, lane[None, :], counter)  # (tries, n)
    x = to_normal(w_x, dtype)
    u = 1 - to_unit(w_u, dtype)  # in (0, 1]: log(u) is finite
    y = c[None] * x
    positive = y > -1  # v = (1 + y)^3 must be positive
    y = jnp.where(positive, y, 0)
    log1p_y = jnp.log1p(y)
    squeeze = u < 1 - 0.0331 * ((x * x) * (x * x))
    # The log test's bound x^2 / 2 + d (1 - v + log v), with d y^2 = x^2 / 9 substituted:
    # 3d times log1p(y) past its cubic term. Its float rounding grows like sqrt(d), not d.
    bound = 3 * d[None] * ((log1p_y - y) + y * y * (0.5 - y / 3))
    accepted = positive & (squeeze | (jnp.log(u) < bound))
    log_g = jnp.log(d)[None] + 3 * log1p_y  # log(d v)
    out = log_g[tries - 1]
    for i in reversed(range(tries - 1)):
        out = jnp.where(accepted[i], log_g[i], out)
    return out, jnp.any(accepted, axis=0)


def _finish(
    kds: UInt32[Array, "rows 2"],
    d: Float[Array, "rows n"],
    log_g: Float[Array, "rows n"],
    done: Bool[Array, "rows n"],
    first: int,
    buffer: int,
) -> Float[Array, "rows n"]:
    """Further tries for the elements not ``done`` until every one is accepted.

    Each pass gathers up to ``buffer`` pending elements of all rows and draws their next
    ``_LOOP_TRIES`` tries (from try ``first`` on, as :func:`_tries` numbers them, with the
    row's key words ``kds``); elements beyond the buffer wait for the next pass. An
    element's tries follow its own sequence, so each row's draws depend on its key alone,
    however rows are batched, and are independent of the tries before."""
    num_rows, width = d.shape
    size = num_rows * width
    if size == 0:
        return log_g
    buffer = min(buffer, size)
    d, log_g, done = (x.ravel() for x in (d, log_g, done))

    def pending(state):
        _, _, done = state
        return jnp.any(~done)

    def one_pass(state):
        tried, log_g, done = state
        (idx,) = jnp.nonzero(~done, size=buffer, fill_value=size)  # size: a dropped slot
        safe = jnp.minimum(idx, size - 1)
        lane = (safe % width).astype(jnp.uint32)
        fresh, accepted = jax.vmap(
            lambda kd, lane, n, d: _tries(kd, lane[None], first + n, d[None], _LOOP_TRIES)
        )(kds[safe // width], lane, tried[safe], d[safe])
        # An unaccepted try's value is written too: its element stays pending, so a later
        # pass overwrites it.
        log_g = log_g.at[idx].set(fresh[:, 0], mode="drop")
        tried = tried.at[idx].add(_LOOP_TRIES, mode="drop")
        return tried, log_g, done.at[idx].set(accepted[:, 0], mode="drop")

    start = (jnp.zeros(size, jnp.uint32), log_g, done)
    _, log_g, _ = lax.while_loop(pending, one_pass, start)
    return log_g.reshape(num_rows, width)


def log_gamma(
    key: PRNGKeyArray | Shaped[Array, 2],
    alpha: Real[ArrayLike, "*shape"],
    dtype=None,
    *,
    tries: int = 1,
) -> Float[Array, "*shape"]:
    """Exact draws of ``log G`` with ``G ~ Gamma(alpha, 1)``, one per entry of ``alpha``.

    Marsaglia and Tsang's rejection method for the shape ``alpha`` when ``alpha >= 1`` and
    ``alpha + 1`` otherwise, boosted back by ``log G(alpha) = log G(alpha + 1) + log(U) /
    alpha`` in log space, so that tiny shapes do not underflow.

    ``jax.random.loggamma`` runs one rejection loop per element, splitting keys in it.
    Here every element gets ``tries`` tries at once (one Threefry call gives every try
    its normal and its uniform, counter-based as in :func:`random_words`) and keeps its
    first accepted one. A try is accepted with probability above
    0.95 for any shape, so after ``tries`` tries fewer than ``size / 20**tries`` elements
    are pending; a ``lax.while_loop`` gathers them into a buffer of ``4 + size //
    16**tries`` slots and draws fresh tries for them, pass after pass, until every element
    is accepted. No element is ever returned unaccepted. Each element's tries are
    independent, so the draws are exact; the bits differ from ``jax.random.loggamma``'s.
    The program holds three Threefry calls, which keeps its compilation short.
    Under ``jax.vmap`` over keys, each key gives the draws it gives alone.

    Args:
        key: a PRNG key from ``jax.random.key(seed)`` (or a legacy ``uint32[2]`` key).
        alpha: ``(*shape)`` positive finite shapes; a zero gives ``-inf`` (the limit),
            other entries NaN.
        dtype: float dtype of the draws; by default ``alpha``'s if it is floating, else the
            default float dtype.
        tries: keyword-only; tries per element in the first pass (1 is fastest: the
            loop's buffer then holds the rejected twentieth).

    Returns:
        ``(*shape)`` draws of ``log G``; finite for finite positive shapes (down to about
        ``1e-37`` in float32, where ``log(U) / alpha`` would overflow).

    Raises:
        ValueError: if ``tries < 1`` or ``key`` is a batch of keys.
        TypeError: if ``key`` is not a key or ``dtype`` is not a float dtype.

    Examples:
        >>> import jax
        >>> alpha = jax.numpy.array([1e-4, 0.5, 3.0, 1e4])
        >>> log_gamma(jax.random.key(0), alpha).shape
        (4,)

    References:
        G. Marsaglia and W. W. Tsang, "A simple method for generating gamma variables",
        ACM Transactions on Mathematical Software 26 (2000), 363-372.
    """
    key = as_typed_key(key)
    return log_gamma_rows(key[None], jnp.asarray(alpha)[None], dtype, tries=tries)[0]


def log_gamma_rows(
    keys: Key[Array, " rows"],
    alpha: Real[ArrayLike, " rows *shape"],
    dtype=None,
    *,
    tries: int = 1,
) -> Float[Array, " rows *shape"]:
    """:func:`log_gamma` for a batch of keys, one per row of ``alpha``: row ``i`` gets
    exactly ``log_gamma(keys[i], alpha[i])``.

    Unlike ``jax.vmap(log_gamma)``, the rows share one rejection loop whose buffer holds
    the pending elements of every row, so a batch of many small rows costs one small loop
    and compiles to a small program.

    Args:
        keys: ``(rows,)`` typed PRNG keys.
        alpha: ``(rows, *shape)`` shapes (see :func:`log_gamma`).
        dtype, tries: as for :func:`log_gamma`.

    Returns:
        ``(rows, *shape)`` draws of ``log G``.

    Raises:
        ValueError: if ``tries < 1`` or ``keys`` and ``alpha`` disagree on the rows.
        TypeError: if ``dtype`` is not a float dtype.
    """
    if tries < 1:
        raise ValueError(f"`log_gamma(tries=...)` must be at least 1; got {tries}")
    alpha = jnp.asarray(alpha)
    if keys.ndim != 1 or alpha.ndim < 1 or alpha.shape[0] != keys.shape[0]:
        raise ValueError(
            f"`log_gamma_rows` needs one key per row of `alpha`; got keys of shape "
            f"{keys.shape} and `alpha` of shape {alpha.shape}"
        )
    if dtype is None:
        floating = jnp.issubdtype(alpha.dtype, jnp.floating)
        dtype = alpha.dtype if floating else jax.dtypes.canonicalize_dtype(float)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"`log_gamma(dtype=...)` must be a float dtype; got {dtype}")
    shape = alpha.shape
    given = alpha.astype(dtype).reshape(shape[0], -1)
    valid = (given > 0) & jnp.isfinite(given)
    small = given < 1
    alpha = jnp.where(valid, given, 1)  # dummy shape, marked done below so the loop ends
    d = jnp.where(small, alpha + 1, alpha) - 1 / 3
    kd = jax.vmap(key_data)(keys)  # (rows, 2) Threefry words
    lane = jnp.arange(d.shape[1], dtype=jnp.uint32)
    log_g, accepted = jax.vmap(lambda kd, d: _tries(kd, lane, 0, d, tries))(kd, d)
    log_g = _finish(kd, d, log_g, accepted | ~valid, tries, 4 + (alpha.size >> (4 * tries)))
    # The boost's uniform: a counter that the tries never reach.
    boost = jax.vmap(lambda kd: random_words(kd, lane, _BOOST_COUNTER)[0])(kd)
    u = 1 - to_unit(boost, dtype)
    log_g = jnp.where(small, log_g + jnp.log(u) / alpha, log_g)
    invalid = jnp.where(given == 0, -jnp.inf, jnp.nan)  # Gamma(0) is the point mass at 0
    return jnp.where(valid, log_g, invalid).reshape(shape)
