"""Counter-based random numbers and exact binomial/multinomial samplers.

Every random number is a pure function of ``(key, stream, lane, counter)`` through
Threefry-2x32, the generator behind ``jax.random``. An annotation's uniform depends on
its image index and annotation index only, so results do not depend on how the image
axis is chunked or sharded over devices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.random import threefry_2x32
from jaxtyping import Array, Float, Int, PRNGKeyArray, Shaped, UInt32

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
