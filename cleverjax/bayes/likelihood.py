"""The exact collapsed likelihood of the Bayesian SPA model.

Generative model, for image ``x`` with proposal ``rho`` (prior row ``g = rho``, or the
population row ``g = K`` for a *probe* image whose proposal was drawn at random)::

    z        ~ Categorical(weights[g])                      mixture component
    p        ~ Dirichlet(concentration[g, z] * mean[g, z])  true label distribution
    biased   ~ Multinomial(N, p_b(p, rho, delta, one_star)) annotations with the proposal
    unbiased ~ Multinomial(M, p)                            annotations without it

Structure used for exact integration (Dirichlet aggregation): ``t = p[rho]`` is
Beta(a_rho, a_rest) and ``r = p_-rho / (1 - t)`` is Dirichlet(a_-rho), independent a
priori. The likelihood factorises into a part in ``t`` and a part in ``r``; ``r`` is
conjugate, and the part in ``t`` is a polynomial: with ``A(t) = delta (1 - t) + 1* t``,

    A^c (1 - A)^(N - c) t^u (1 - t)^(M - u) = sum_s W_s t^(s + u) (1 - t)^(N + M - s - u),

so the marginal likelihood is a finite sum of Beta functions and the posterior of ``t``
is a finite mixture of Betas. Nothing is approximated.

Two parts, computed apart because only one depends on delta:

- the *row part* (:func:`row_part`): the conjugate integral over ``r``, the multinomial
  constants and the mixture weights, per row and component; it does not depend on delta;
- the *t part* (:func:`t_part`): the integral over ``t``, per distinct entry (prior row,
  proposal, c, N, u, M) and component, from the weights ``W_s`` of the entry's (c, N).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betaln, digamma, gammaln, logsumexp
from jaxtyping import Array, Bool, Float, Int

from .data import EntryTable, LivePairs, SPAData, entry_calibrated


class Prior(eqx.Module):
    """Class-conditional mixture prior over label distributions.

    Row ``g < K`` is the prior of images proposed as class ``g``; row ``K`` is the
    population prior used for probe images. A component is a Dirichlet (``kind`` 0), or
    a *spike*: ``p[rho] = 0`` exactly (``kind`` 1) or ``p[rho] = 1`` exactly (``kind`` 2),
    the rest following the component's Dirichlet. Spikes model what real soft labels
    are full of: classes that no annotator chose, and unanimous images.

    A component also fixes how a rejection chooses its class: in proportion to ``p``
    (SPA), or uniformly among the other ``K - 1`` classes (``uniform_rejection``). A prior
    with components of both kinds is a per-image mixture of the two rejection kernels,
    its weight learned with the prior.

    Attributes:
        mean: ``(K + 1, components, K)`` Dirichlet means (rows on the simplex).
        concentration: ``(K + 1, components)`` Dirichlet concentrations (> 0).
        weights: ``(K + 1, components)`` mixture weights (rows on the simplex).
        kind: static tuple, one entry per component: 0 Dirichlet, 1 spike at
            ``p[rho] = 0``, 2 spike at ``p[rho] = 1``.
        uniform_rejection: static tuple, one bool per component (empty: none): the
            component's rejections choose uniformly among the other classes.
        degree: static; degree in ``t = p[rho]`` of one biased annotation's acceptance
            probability: 1 under SPA (``A(t) = delta (1 - t) + 1* t``), 2 when delta
            depends on the image's difficulty (see :class:`DifficultyDelta`). The
            polynomial of an image with N biased annotations has degree ``degree * N``.
    """

    mean: Float[Array, "groups components classes"]
    concentration: Float[Array, "groups components"]
    weights: Float[Array, "groups components"]
    kind: tuple[int, ...] = eqx.field(static=True)
    uniform_rejection: tuple[bool, ...] = eqx.field(static=True, default=())
    degree: int = eqx.field(static=True, default=1)


class DifficultyDelta(NamedTuple):
    """Delta that depends on the image's difficulty, linearly in ``t = p[rho]``:
    ``delta(t) = hard (1 - t) + easy t``. ``hard`` is the acceptance bias of an image
    whose proposal no annotator would choose, ``easy`` that of an image whose proposal
    every annotator would choose; ``hard == easy`` is SPA.

    With ``x = 1 - t`` and ``y = t`` the acceptance probability is a quadratic form,
    ``A(t) = hard x^2 + (easy + 1*) x y + 1* y^2``, and ``1 - A(t) = (1 - hard) x^2 +
    (2 - easy - 1*) x y + (1 - 1*) y^2``: every coefficient is non-negative for
    ``0 <= hard, easy <= 1* <= 1``, so the weights of the degree-2N polynomial are sums
    of positive terms (no cancellation in float32).
    """

    hard: Array
    easy: Array


class AnnotatorData(NamedTuple):
    """Per-annotation acceptance data for the per-annotator model.

    Attributes:
        worker: ``(rows, slots)`` annotator index of each biased annotation (-1: none).
        accepted: ``(rows, slots)`` the annotation is the proposed class.
    """

    worker: Int[Array, "rows slots"]
    accepted: Bool[Array, "rows slots"]


MIN_ALPHA = 1e-4
"""Floor on Dirichlet parameters: below it float32 Gamma functions lose all precision."""

CONCENTRATION_BOUNDS = (1e-2, 1e4)
"""Range of the learned Dirichlet concentrations (empirical Bayes can otherwise drive
them to 0 or infinity, where the likelihood is flat and float32 overflows)."""


def _xlogy(k: Array, log_x: Array) -> Array:
    """k * log(x) with 0 * log(0) = 0."""
    return jnp.where(k > 0, k * log_x, 0.0)


@jax.custom_jvp
def _betaln(a: Array, b: Array) -> Array:
    """log B(a, b), accurate for large arguments (JAX's ``betaln``), with its derivative
    written out: differentiating through ``betaln``'s branches makes a program that is
    several times larger and slower to compile."""
    return betaln(a, b)


@_betaln.defjvp
def _betaln_jvp(primals, tangents):
    a, b = primals
    da, db = tangents
    ab = digamma(a + b)
    return _betaln(a, b), (digamma(a) - ab) * da + (digamma(b) - ab) * db


def _masked_logsumexp(x: Array, valid: Array, axis: int = -1) -> Array:
    """logsumexp over the valid entries, -inf where none is valid, with finite gradients
    (the double-where trick: never differentiate a logsumexp of only -inf)."""
    any_valid = jnp.any(valid, axis=axis)
    safe = jnp.where(jnp.expand_dims(any_valid, axis), jnp.where(valid, x, -jnp.inf), 0.0)
    return jnp.where(any_valid, logsumexp(safe, axis=axis), -jnp.inf)


# ----------------------------------------------------------------------------------
# Polynomial weights W_s
# ----------------------------------------------------------------------------------


def weight_window(num_terms: int) -> int:
    """Terms of the inner sum of ``W_s`` that are summed for each ``s``.

    ``W_s = sum_j w(s - j, j)`` where ``j`` counts factors ``(1 - 1*) t`` of the rejected
    annotations. For fixed ``s`` the terms in ``j`` are a Fisher noncentral
    hypergeometric shape: log-concave, with standard deviation at most ``sqrt(N) / 4``.
    A window of ``2.5 sqrt(T)`` on either side of the mode (at least ten standard
    deviations) holds every term within 50 nats of the largest, which is exact in float
    arithmetic; below 64 terms the whole range is summed.
    """
    if num_terms <= 64:
        return num_terms
    return min(num_terms, 2 * math.ceil(2.5 * math.sqrt(num_terms)) + 1)


def _window_start(c, r, s, log_omega, window: int, num_terms: int):
    """First ``j`` of each window: the mode of the terms in ``j`` (found by bisection on
    the ratio of successive terms, which falls through 1 exactly once), centred and
    clipped to the valid range ``max(0, s - c) <= j <= min(r, s)``."""
    lo = jnp.maximum(0.0, s - c)
    hi = jnp.minimum(r, s)

    def rising(x):  # term(x + 1) > term(x)
        left = log_omega + jnp.log(jnp.maximum(r - x, 0.0)) + jnp.log(jnp.maximum(s - x, 0.0))
        return left > jnp.log(x + 1.0) + jnp.log(jnp.maximum(c - s + x + 1.0, 1e-30))

    a, b = lo, jnp.maximum(hi, lo)  # invariant: the mode lies in [a, b]
    for _ in range(max(1, math.ceil(math.log2(num_terms))) + 1):
        mid = jnp.floor((a + b) / 2)
        up = rising(mid)
        a = jnp.where(up, mid + 1, a)
        b = jnp.where(up, b, mid)
    start = a - window // 2
    return jnp.clip(start, lo, jnp.maximum(lo, hi - window + 1))


def _one_minus(x: Array) -> tuple[Array, Array]:
    """``1 - x`` as an unevaluated sum ``hi + lo`` that holds it exactly (Fast2Sum)."""
    hi = 1 - x
    return hi, (1 - hi) - x


def _log_sum(a: Array, b: Array, a_lo: Array | float = 0.0, b_lo: Array | float = 0.0) -> Array:
    """``log(a + a_lo + b + b_lo)`` with the rounding of the sum compensated (TwoSum): the
    per-pair factors raise it to powers up to N, which would turn a rounding of 6e-8
    into 6e-5 nats at N = 1000."""
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    return jnp.log(s) + jnp.log1p((err + a_lo + b_lo) / s)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def _log_weights_recurrence(c_rho, n, delta, one_star, num_terms: int):
    """:func:`_recurrence_values`, with its derivatives from the weights of neighbouring
    pairs (see :func:`_recurrence_jvp`): one batched run of the recurrence for the values
    and both slopes, where automatic differentiation would carry two tangents through
    every step of its scans (forward mode) or run them backwards over every term
    (reverse mode, at N = 1000 seven times the forward pass). Reverse-mode callers get
    the transpose of the linear map, a contraction with the two slope tables."""
    return _recurrence_values(c_rho, n, delta, one_star, num_terms)


@_log_weights_recurrence.defjvp
def _recurrence_jvp(num_terms, primals, tangents):
    """Exact slopes of ``log W_s(c, r)`` (``r = N - c``) from the weights of the pairs
    ``(c - 1, r)`` and ``(c, r - 1)``: differentiating the double sum term by term,

        d W_s(c, r) / d delta = c W_s(c - 1, r) - r W_s(c, r - 1),
        d W_s(c, r) / d 1*    = c W_{s-1}(c - 1, r) - r W_{s-1}(c, r - 1),

    (``(c - i) C(c, i) = c C(c - 1, i)`` and ``i C(c, i) = c C(c - 1, i - 1)``, the same for
    ``r``). The three pairs run through the recurrence in one batch; the neighbours go
    through this same function, so higher derivatives follow the same rule."""
    c_rho, n, delta, one_star = primals
    d_delta, d_star = tangents[2:]  # the counts are integers: no tangent
    delta, one_star = jnp.broadcast_arrays(delta, one_star)
    pairs = c_rho.shape[0]
    has_c, has_r = c_rho > 0, n > c_rho
    every = _log_weights_recurrence(
        jnp.concatenate([c_rho, jnp.maximum(c_rho - 1, 0), c_rho]),
        jnp.concatenate([n, jnp.maximum(n - 1, 0), jnp.where(has_r, n - 1, n)]),
        delta,
        one_star,
        num_terms,
    )
    log_w, fewer_c, fewer_r = every[:pairs], every[pairs : 2 * pairs], every[2 * pairs :]
    dtype = log_w.dtype
    ok = jnp.isfinite(log_w)
    base = jnp.where(ok, log_w, 0.0)

    def ratio(count, has, other, shift: bool):
        # count * W'_{s or s-1} / W_s, 0 where the neighbour does not exist.
        if shift:
            other = jnp.concatenate([jnp.full((pairs, 1), -jnp.inf, dtype), other[:, :-1]], 1)
        value = count.astype(dtype)[:, None] * jnp.exp(jnp.where(ok, other, -jnp.inf) - base)
        return jnp.where(has[:, None] & ok, value, 0.0)

    by_delta = ratio(c_rho, has_c, fewer_c, False) - ratio(n - c_rho, has_r, fewer_r, False)
    by_star = ratio(c_rho, has_c, fewer_c, True) - ratio(n - c_rho, has_r, fewer_r, True)
    return log_w, by_delta * d_delta + by_star * d_star


def _recurrence_values(c_rho, n, delta, one_star, num_terms: int):
    """log W_s in O(T) per pair: W_s is ``(1* + delta)^c (2 - 1* - delta)^r`` times the
    probability that ``I + J = s``, ``I ~ Binomial(c, b)``, ``J ~ Binomial(r, f)`` with
    ``b = 1* / (1* + delta)``, ``f = (1 - 1*) / (2 - 1* - delta)`` (``a = 1 - b``,
    ``e = 1 - f``). Its generating function ``(a + b z)^c (e + f z)^r`` gives

        (s + 1) a e P[s+1] = (b e (c - s) + a f (r - s)) P[s] + (N - s + 1) b f P[s-1],

    whose middle coefficient is positive below a turning point and negative above it. The
    ratios of successive terms are therefore run forwards from ``s = 0`` up to the turning
    point and backwards from ``s = N`` down to it, each in its stable direction (every
    term positive). The log-ratios are summed outwards from the mode of P, and normalised
    (P sums to one), which anchors them.
    """
    dtype = jnp.result_type(delta, one_star)
    c = c_rho.astype(dtype)
    r = (n - c_rho).astype(dtype)
    total = c + r
    acc = one_star + delta
    rej_hi, rej_lo = _one_minus(one_star)
    d_hi, d_lo = _one_minus(delta)
    rej = rej_hi + d_hi
    b, a = one_star / acc, delta / acc
    f, e = rej_hi / rej, (d_hi + d_lo) / rej
    per_pair = _xlogy(c, _log_sum(one_star, delta)) + _xlogy(
        r, _log_sum(rej_hi, d_hi, rej_lo, d_lo)
    )
    # Support of I + J and the turning point of the recurrence, rounded: choices of
    # index, not differentiated.
    sg = jax.lax.stop_gradient
    lo = jnp.where(sg(a) > 0, 0.0, c)
    hi = jnp.where(sg(f) > 0, total, c)
    turn = (c * b * e + r * f * a) / jnp.maximum(a * f + b * e, jnp.finfo(dtype).tiny)
    m = sg(jnp.clip(jnp.round(turn), lo, hi))

    # (c - s) and (r - s) are exact: no cancellation between large products.
    coeff_a = lambda s: b * e * (c - s) + a * f * (r - s)  # noqa: E731
    coeff_b = lambda s: (total - s + 1) * b * f  # noqa: E731
    coeff_c = lambda s: (s + 1) * a * e  # noqa: E731

    def forward(prev, s):  # prev = P[s-1] / P[s]; returns log(P[s+1] / P[s])
        ratio = (coeff_a(s) + coeff_b(s) * prev) / coeff_c(s)
        use = (s >= lo) & (s < m)
        ratio = jnp.where(use & (ratio > 0) & jnp.isfinite(ratio), ratio, 1.0)
        return jnp.where(use, 1 / ratio, 0.0), jnp.where(use, jnp.log(ratio), 0.0)

    def backward(nxt, s):  # nxt = P[s+1] / P[s]; returns log(P[s-1] / P[s])
        bs = coeff_b(s)
        ratio = (coeff_c(s) * nxt - coeff_a(s)) / jnp.where(bs > 0, bs, 1.0)
        use = (s > m) & (s <= hi)
        ratio = jnp.where(use & (ratio > 0) & jnp.isfinite(ratio), ratio, 1.0)
        return jnp.where(use, 1 / ratio, 0.0), jnp.where(use, jnp.log(ratio), 0.0)

    steps = jnp.arange(num_terms, dtype=dtype)
    zeros = jnp.zeros_like(c)
    _, up = jax.lax.scan(forward, zeros, steps)  # log(P[s+1] / P[s]), lo <= s < m
    _, down = jax.lax.scan(backward, zeros, steps, reverse=True)  # log(P[s-1] / P[s]), s > m
    s = steps[:, None]
    lo_, hi_, m_ = lo[None], hi[None], m[None]
    step = jnp.where(s < m_, up, -jnp.concatenate([down[1:], zeros[None]]))  # log(P[s+1]/P[s])
    step = jnp.where((s >= lo_) & (s < hi_), step, 0.0)
    # Anchored at the mode of P (within one of its mean) and summed outwards from it, so
    # that the terms that carry the mass are the fewest roundings away from exact.
    top = sg(jnp.clip(jnp.round(c * b + r * f), lo, hi))
    right = s >= top[None]
    below = jnp.flip(jnp.cumsum(jnp.flip(jnp.where(right, 0.0, step), 0), axis=0), 0)
    above = jnp.cumsum(jnp.where(right, step, 0.0), axis=0) - jnp.where(right, step, 0.0)
    # P sums to 1 over its support: normalising anchors the ratios exactly, with the
    # terms that carry the mass (those near the mode) the fewest roundings away.
    rel = jnp.where((s >= lo_) & (s <= hi_), above - below, -jnp.inf)  # log(P[s] / P[top])
    log_p = rel - logsumexp(rel, axis=0, keepdims=True)
    return (per_pair[None] + log_p).T


def _log_weights_block(c_rho, n, delta, one_star, num_terms: int, window: int):
    dtype = jnp.result_type(delta, one_star)
    c = c_rho.astype(dtype)[:, None, None]
    r = (n - c_rho).astype(dtype)[:, None, None]
    s = jnp.arange(num_terms, dtype=dtype)[None, :, None]
    ld, l1d = jnp.log(delta), jnp.log1p(-delta)
    lw, l1w = jnp.log(one_star), jnp.log1p(-one_star)
    offsets = jnp.arange(window, dtype=dtype)[None, None, :]
    if window >= num_terms:
        j = jnp.maximum(0.0, s - c) + offsets
    else:
        # Odds of moving one factor from the accepted to the rejected side; 0 when
        # 1* = 1 or delta = 0 (then the inner sum has a single term).
        log_omega = jnp.where((one_star < 1) & (delta > 0), l1w + ld - lw - l1d, -jnp.inf)
        start = _window_start(c, r, s, jax.lax.stop_gradient(log_omega), window, num_terms)
        j = jax.lax.stop_gradient(start) + offsets
    i = s - j
    valid = (i >= 0) & (i <= c) & (j <= r)
    ic, jc = jnp.clip(i, 0, c), jnp.clip(j, 0, r)
    # Binomial coefficients from a table of log factorials.
    log_fact = gammaln(jnp.arange(num_terms, dtype=dtype) + 1.0)

    def lf(x):
        return log_fact[x.astype(jnp.int32)]

    binoms = lf(c) - lf(ic) - lf(c - ic) + lf(r) - lf(jc) - lf(r - jc)
    term = binoms + _xlogy(ic, lw) + _xlogy(c - ic, ld) + _xlogy(jc, l1w) + _xlogy(r - jc, l1d)
    return _masked_logsumexp(term, valid & (term > -jnp.inf))


_BLOCK_ELEMENTS = 2**22
"""Pairs are processed in blocks of at most this many (pair, s, j) terms (bounded memory)."""


def log_weights_counts(
    c_rho: Array, n: Array, delta: Array, one_star: Array, num_terms: int
) -> Float[Array, "entries terms"]:
    """log W_s, s = 0..num_terms-1, of ``A^c (1-A)^(N-c)`` in the basis t^s (1-t)^(N-s).

    ``W_s = sum_{i+j=s} C(c,i) 1*^i delta^(c-i) C(N-c,j) (1-1*)^j (1-delta)^(N-c-j)``;
    ``-inf`` for ``s > N``. ``num_terms`` must exceed the largest N.

    Up to 64 terms the inner sums are summed in full (pairs in blocks, so that memory
    stays bounded). Beyond, a three-term recurrence in ``s`` gives the ratios of
    successive W_s, normalised (see :func:`_log_weights_recurrence`): ``O(T)`` per pair
    rather than ``O(T^2)``. In float32 the terms within 30 nats of the largest are
    within 1e-4 nats of float64 up to N = 1000, beyond the rounding of the value itself
    (``eps |log W_s|``), tested.
    """
    if num_terms > 64:
        return _log_weights_recurrence(c_rho, n, delta, one_star, num_terms)
    return windowed_log_weights(c_rho, n, delta, one_star, num_terms, num_terms)


def windowed_log_weights(c_rho, n, delta, one_star, num_terms: int, window: int) -> Array:
    """log W_s by the double sum, each inner sum over ``window`` terms around its largest
    (all of them when ``window >= num_terms``; see :func:`weight_window`), pairs in blocks
    so that memory stays bounded: ``O(T window)`` per pair."""
    pairs = c_rho.shape[0]
    per_block = max(1, _BLOCK_ELEMENTS // (num_terms * window))
    if pairs <= per_block:
        return _log_weights_block(c_rho, n, delta, one_star, num_terms, window)
    blocks = -(-pairs // per_block)
    extra = blocks * per_block - pairs
    c_pad = jnp.concatenate([c_rho, jnp.zeros(extra, c_rho.dtype)]).reshape(blocks, per_block)
    n_pad = jnp.concatenate([n, jnp.zeros(extra, n.dtype)]).reshape(blocks, per_block)
    one = jax.checkpoint(
        lambda cn: _log_weights_block(cn[0], cn[1], delta, one_star, num_terms, window)
    )
    out = jax.lax.map(one, (c_pad, n_pad))
    return out.reshape(blocks * per_block, num_terms)[:pairs]


def log_weights_difficulty(
    c_rho: Array, n: Array, delta: DifficultyDelta, one_star: Array, num_terms: int
) -> Float[Array, "pairs terms"]:
    """log W_s, s = 0..num_terms-1, of ``A^c (1-A)^(N-c)`` in the basis
    ``t^s (1-t)^(2N-s)`` when delta depends on difficulty (see :class:`DifficultyDelta`):
    the product of ``c`` accepting and ``N - c`` rejecting quadratic factors, expanded by
    dynamic programming over the annotations (``O(N)`` steps of ``O(T)`` per pair), in
    log space. ``-inf`` for ``s > 2N``; ``num_terms`` must exceed ``2 max(N)``."""
    dtype = jnp.result_type(delta.hard, one_star)
    tiny = jnp.finfo(dtype).tiny
    # A huge negative number, not -inf: logaddexp(-inf, -inf) has a NaN gradient.
    neg = jnp.asarray(-1e30, dtype)
    hard, easy, star = (jnp.asarray(x, dtype) for x in (delta.hard, delta.easy, one_star))
    log_acc = jnp.log(jnp.maximum(jnp.stack([hard, easy + star, star]), tiny))
    log_rej = jnp.log(jnp.maximum(jnp.stack([1 - hard, 2 - easy - star, 1 - star]), tiny))
    pairs = c_rho.shape[0]
    start = jnp.full((pairs, num_terms), neg, dtype).at[:, 0].set(0.0)
    pad = jnp.full((pairs, 1), neg, dtype)

    def step(log_w, j):
        # Factor j: accepting for j < c, rejecting for c <= j < N, none beyond.
        f = jnp.where((j < c_rho)[:, None], log_acc[None, :], log_rej[None, :])
        by1 = jnp.concatenate([pad, log_w[:, :-1]], axis=1)
        by2 = jnp.concatenate([pad, pad, log_w[:, :-2]], axis=1)
        stacked = jnp.stack([log_w + f[:, :1], by1 + f[:, 1:2], by2 + f[:, 2:]])
        new = jax.scipy.special.logsumexp(stacked, axis=0)
        return jnp.where((j < n)[:, None], new, log_w), None

    log_w, _ = jax.lax.scan(step, start, jnp.arange((num_terms - 1) // 2))
    s = jnp.arange(num_terms)[None, :]
    return jnp.where(s <= 2 * n[:, None], log_w, -jnp.inf)


def pair_log_weights(
    c_rho: Array, n: Array, delta: Array | DifficultyDelta, one_star: Array, num_terms: int
) -> Float[Array, "*classes pairs terms"]:
    """:func:`log_weights_counts` for a scalar ``delta``; for one delta per proposed class
    (``delta`` of shape ``(classes,)``), the weights of every pair under every class's
    delta, ``(classes, pairs, terms)``; for a :class:`DifficultyDelta`,
    :func:`log_weights_difficulty`."""
    if isinstance(delta, DifficultyDelta):
        return log_weights_difficulty(c_rho, n, delta, one_star, num_terms)
    if jnp.ndim(delta) == 0:
        return log_weights_counts(c_rho, n, delta, one_star, num_terms)
    return jax.vmap(lambda d: log_weights_counts(c_rho, n, d, one_star, num_terms))(delta)


def pick_weights(log_w: Array, rho: Array, pair: Array) -> Float[Array, "entries terms"]:
    """Each entry's row of :func:`pair_log_weights` (``pair``: the entry's pair index,
    ``rho``: its proposal, which selects the delta when there is one per class)."""
    return log_w[pair] if log_w.ndim == 2 else log_w[rho, pair]


def live_log_weights(
    pairs: LivePairs, rho: Array, delta: Array | DifficultyDelta, one_star: Array, num_terms: int
) -> Float[Array, "entries terms"]:
    """log W_s of every entry whose pair is in ``pairs`` (a compacted pair list, see
    :func:`cleverjax.bayes.data.entry_pairs`; other entries get pair 0's row), computed
    once per listed pair; ``rho``: each entry's proposal."""
    log_w = pair_log_weights(pairs.c, pairs.n, delta, one_star, num_terms)
    return pick_weights(log_w, rho, pairs.entry_pair)


def table_log_weights(
    table: EntryTable, delta: Array | DifficultyDelta, one_star: Array, num_terms: int
) -> Float[Array, "entries terms"]:
    """log W_s of every entry, computed once per (c, N) pair (and proposed class, when
    ``delta`` has one value per class)."""
    log_w = pair_log_weights(table.pair_c, table.pair_n, delta, one_star, num_terms)
    return pick_weights(log_w, table.rho, table.pair)


def entry_log_weights(
    table: EntryTable,
    delta: Array | DifficultyDelta,
    one_star: Array,
    num_terms: int,
    *,
    num_classes: int,
    cut: bool,
) -> Float[Array, "entries terms"]:
    """log W_s of every entry. With ``cut``, entries that are not calibration data see
    delta and 1* through ``stop_gradient``: they cannot move them (a cut posterior)."""
    log_w = table_log_weights(table, delta, one_star, num_terms)
    if not cut:
        return log_w
    frozen = jax.lax.stop_gradient(log_w)  # same values; no gradient to delta or 1*
    return jnp.where(entry_calibrated(table, num_classes)[:, None], log_w, frozen)


def log_weights_annotators(
    worker: Array, accepted: Array, delta_w: Array, one_star: Array, num_terms: int
) -> Float[Array, "rows terms"]:
    """log W_s for annotations with their own deltas: the product of the linear factors
    ``delta_w (1-t) + 1* t`` (accepted) or ``(1-delta_w)(1-t) + (1-1*) t`` (rejected),
    expanded in the Bernstein basis by dynamic programming over annotation slots."""
    dtype = delta_w.dtype
    rows, slots = worker.shape
    # A huge negative number, not -inf: logaddexp(-inf, -inf) has a NaN gradient.
    neg = jnp.asarray(-1e30, dtype)
    tiny = jnp.finfo(dtype).tiny
    log_w = jnp.full((rows, num_terms), neg, dtype).at[:, 0].set(0.0)
    d = delta_w[jnp.clip(worker, 0, None)]
    lw = jnp.log(jnp.maximum(one_star, tiny))
    l1w = jnp.log(jnp.maximum(1 - one_star, tiny))

    def step(log_w, xs):
        d_j, acc_j, valid_j = xs
        # Coefficient on (1-t) and on t of this annotation's factor.
        log_a = jnp.log(jnp.maximum(jnp.where(acc_j, d_j, 1 - d_j), tiny))
        log_b = jnp.where(acc_j, lw, l1w)
        shifted = jnp.concatenate([jnp.full((rows, 1), neg, dtype), log_w[:, :-1]], axis=1)
        new = jnp.maximum(jnp.logaddexp(log_w + log_a[:, None], shifted + log_b[:, None]), neg)
        return jnp.where(valid_j[:, None], new, log_w), None

    xs = (d.T, accepted.T, (worker >= 0).T)
    log_w, _ = jax.lax.scan(step, log_w, xs)
    return jnp.where(log_w > 0.5 * neg, log_w, -jnp.inf)


# ----------------------------------------------------------------------------------
# The two parts of the collapsed likelihood
# ----------------------------------------------------------------------------------


class RowPart(NamedTuple):
    """Per row and mixture component, everything that does not depend on delta.

    Attributes:
        log_rest: ``(rows, comps)`` log mixture weight + log of the conjugate integral over
            ``r`` + the multinomial constants.
        a_rest: ``(rows, comps, classes)`` Dirichlet posterior of ``r`` (zero at rho).
    """

    log_rest: Float[Array, "rows comps"]
    a_rest: Float[Array, "rows comps classes"]


class TPart(NamedTuple):
    """Per entry and mixture component, the integral over ``t = p[rho]``.

    Attributes:
        log_t: ``(entries, comps)`` log of the integral.
        log_mix: ``(entries, dcomps, terms)`` log posterior weight of each Beta term of t,
            for the Dirichlet components only (:func:`dirichlet_index`): a spike's t is
            0 or 1 exactly, one term.
        a_t: ``(entries, comps)`` Beta prior of t.
        b_t: ``(entries, comps)``.
    """

    log_t: Float[Array, "entries comps"]
    log_mix: Float[Array, "entries dcomps terms"]
    a_t: Float[Array, "entries comps"]
    b_t: Float[Array, "entries comps"]


def _is_rho(proposals: Array, num_classes: int) -> Array:
    return proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]


def uniform_components(prior: Prior) -> np.ndarray:
    """``(components,)`` bool: the components whose rejections choose uniformly."""
    flags = prior.uniform_rejection or (False,) * len(prior.kind)
    if len(flags) != len(prior.kind):
        raise ValueError(
            f"`uniform_rejection` has {len(flags)} entries for {len(prior.kind)} components"
        )
    return np.asarray(flags, bool)


def count_bound(data: SPAData) -> int:
    """:func:`row_part`'s ``bound`` for ``data``: more than any row's count (biased plus
    unbiased) of a class other than its proposal, rounded up to a power of 2; 0 (no
    table) where the table, ``(classes + 1) x bound`` per component and class, would be
    larger than the rows' own Gamma functions."""
    counts = np.asarray(data.counts) + np.asarray(data.unbiased)
    rho = np.asarray(data.proposals)
    others = counts.copy()
    others[np.arange(len(rho)), rho] = 0
    top = int(others.max(initial=0)) + 1
    bound = 1 << max(top - 1, 0).bit_length()
    groups = counts.shape[1] + 1
    return bound if groups * bound <= counts.shape[0] else 0


def _gamma_ratios(alpha: Array, g: Array, n: Array, bound: int) -> Array:
    """``log Gamma(alpha[g, c, k] + n) - log Gamma(alpha[g, c, k])`` for every row, component
    and class (``n``: ``(rows, comps or 1, classes)`` whole counts below ``bound``), looked
    up in a table of every prior row, component, class and count: ``(groups, comps,
    classes, bound)`` Gamma functions instead of one pair per row."""
    groups, comps, classes = alpha.shape
    counts = jnp.arange(bound, dtype=alpha.dtype)
    table = gammaln(alpha[..., None] + counts[None, None, None, :]) - gammaln(alpha)[..., None]
    comp = jnp.arange(comps, dtype=jnp.int32)[None, :, None]
    cls = jnp.arange(classes, dtype=jnp.int32)[None, None, :]
    index = ((g[:, None, None] * comps + comp) * classes + cls) * bound + n.astype(jnp.int32)
    return table.reshape(-1)[index]


def row_part(data: SPAData, prior: Prior, bound: int = 0) -> RowPart:
    """The delta-free part of every row's likelihood under every component.

    Under SPA's kernel the rejected annotations are ``Multinomial(N - c, r)`` and inform
    ``r`` with the unbiased ones; under the uniform kernel each has probability
    ``1 / (K - 1)`` whatever ``p`` is, and only the unbiased annotations inform ``r``.
    The part in ``t``, ``A^c (1 - A)^(N - c)``, is the same for both.

    ``bound``: when positive, more than any row's count of a class other than its
    proposal (:func:`count_bound`); the Gamma-function ratios then come from a table of
    every prior row, component, class and count (the same values, a tenth of the work
    for many rows with few annotations each)."""
    dtype = prior.concentration.dtype
    num_classes = data.counts.shape[1]
    g = jnp.where(data.probe, num_classes, data.proposals)
    alpha_all = jnp.maximum(prior.concentration[..., None] * prior.mean, MIN_ALPHA)
    alpha = alpha_all[g]
    is_rho = _is_rho(data.proposals, num_classes)
    a_rest_prior = jnp.where(is_rho[:, None, :], 0.0, alpha)
    counts = data.counts.astype(dtype)
    unbiased = data.unbiased.astype(dtype)
    uniform = uniform_components(prior)
    others = jnp.where(is_rho, 0.0, counts + unbiased)[:, None, :]
    if uniform.any():
        only_unbiased = jnp.where(is_rho, 0.0, unbiased)[:, None, :]
        others = jnp.where(uniform[None, :, None], only_unbiased, others)
    a_rest = a_rest_prior + others
    # Multivariate Beta ratio B(a + x) / B(a) over the classes other than rho; only
    # classes with counts contribute to the product of Gamma ratios.
    if bound > 0:
        ratios = _gamma_ratios(alpha_all, g, jnp.broadcast_to(others, a_rest.shape), bound)
    else:
        seen = (others > 0) & ~is_rho[:, None, :]
        ratios = jnp.where(
            seen,
            gammaln(jnp.where(seen, a_rest, 1.0)) - gammaln(jnp.where(seen, a_rest_prior, 1.0)),
            0.0,
        )
    log_r = (
        jnp.sum(ratios, axis=-1)
        - gammaln(jnp.sum(a_rest, axis=-1))
        + gammaln(jnp.sum(a_rest_prior, axis=-1))
    )
    n = jnp.sum(counts, axis=1)
    m = jnp.sum(unbiased, axis=1)
    const = (
        gammaln(n + 1.0)
        - jnp.sum(gammaln(counts + 1.0), axis=1)
        + gammaln(m + 1.0)
        - jnp.sum(gammaln(unbiased + 1.0), axis=1)
    )
    if uniform.any():
        rejected = n - jnp.sum(jnp.where(is_rho, counts, 0.0), axis=1)
        kernel = -rejected[:, None] * math.log(max(num_classes - 1, 1))
        const = const[:, None] + jnp.where(uniform[None, :], kernel, 0.0)
    else:
        const = const[:, None]
    return RowPart(log_r + const + jnp.log(prior.weights[g]), a_rest)


class TBasis(NamedTuple):
    """The delta-free half of :func:`t_part`.

    Attributes:
        log_beta: ``(entries, dirichlet comps, terms)`` log of the Beta-function ratio of
            each polynomial term (``-inf`` for ``s > N``).
        a_t: ``(entries, comps)`` Beta prior of t.
        b_t: ``(entries, comps)``.
    """

    log_beta: Float[Array, "entries dcomps terms"]
    a_t: Float[Array, "entries comps"]
    b_t: Float[Array, "entries comps"]


def entry_degree(table: EntryTable, prior: Prior) -> Int[Array, " entries"]:
    """Degree of each entry's polynomial in t: ``prior.degree * N``."""
    return prior.degree * table.n


def _beta_pair(table: EntryTable, prior: Prior, idx=None) -> tuple[Array, Array]:
    """``(a_t, b_t)``: each entry's (or entry ``idx``'s) Beta prior of t per component."""
    group = table.group if idx is None else table.group[idx]
    rho = table.rho if idx is None else table.rho[idx]
    conc = prior.concentration[group]  # (E, comps)
    share = jnp.take_along_axis(prior.mean[group], rho[:, None, None], axis=2)[..., 0]
    return jnp.maximum(conc * share, MIN_ALPHA), jnp.maximum(conc * (1 - share), MIN_ALPHA)


def t_basis(table: EntryTable, prior: Prior, num_terms: int) -> TBasis:
    """What :func:`t_part` needs from the prior: the Beta-function ratios do not depend
    on delta, so a caller that integrates over delta computes them once for every node;
    nor on c, so they are computed once per basis key (``EntryTable.basis``: a large N
    makes nearly every c distinct, while the keys stay few, one per prior row and N
    outside calibration) and copied to the entries once, here."""
    dtype = prior.concentration.dtype
    dirichlet = dirichlet_index(prior)[0]
    a_t, b_t = _beta_pair(table, prior)
    s = jnp.arange(num_terms, dtype=dtype)[None, None, :]
    degree = entry_degree(table, prior)

    def ratios(key):  # (keys,) entries of basis keys -> (keys, dcomps, terms)
        a_k, b_k = _beta_pair(table, prior, key)
        n = degree[key].astype(dtype)[:, None, None]
        m = table.m[key].astype(dtype)[:, None, None]
        u = table.u[key].astype(dtype)[:, None, None]
        # Dirichlet components: t ~ Beta(a_t, b_t), a finite sum of Beta-function ratios.
        a_d, b_d = a_k[:, dirichlet], b_k[:, dirichlet]
        valid = s <= n
        left = a_d[..., None] + u + s
        right = jnp.where(valid, b_d[..., None] + m - u + n - s, 1.0)
        return jnp.where(valid, _betaln(left, right) - _betaln(a_d, b_d)[..., None], -jnp.inf)

    # In two blocks of a loop: computed in one piece, XLA fuses the Beta functions into
    # the gather below and evaluates them once per entry after all (an optimisation
    # barrier does not stop it).
    keys = table.basis_entry
    if keys.shape[0] % 2:
        keys = jnp.concatenate([keys, keys[:1]])
    log_beta = jax.lax.map(ratios, keys.reshape(2, -1))
    log_beta = log_beta.reshape(keys.shape[0], len(dirichlet), num_terms)
    return TBasis(log_beta[table.basis], a_t, b_t)


@jax.custom_vjp
def log_integral(log_w: Array, log_beta: Array) -> Float[Array, "entries dcomps"]:
    """``log sum_s exp(log_w[e, s] + log_beta[e, d, s])`` for every entry ``e`` and
    component ``d`` (``-inf`` terms are left out; ``-inf`` when all are), with its
    gradient written out: the terms' weights ``exp(term - result)`` times the cotangent,
    recomputed in one pass. Differentiated automatically, the masks and the logsumexp's
    own steps cost half as much again (at N = 1000 this sum is most of an evaluation).
    Reverse mode only (``jax.grad``; the fits and NUTS need nothing else)."""
    x = log_w[:, None, :] + log_beta
    top = jnp.max(x, axis=-1, keepdims=True)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    return jnp.log(jnp.sum(jnp.exp(x - top), axis=-1)) + top[..., 0]


def _log_integral_fwd(log_w, log_beta):
    out = log_integral(log_w, log_beta)
    return out, (log_w, log_beta, out)


def _log_integral_bwd(res, g):
    log_w, log_beta, out = res
    ok = jnp.isfinite(out)
    weight = jnp.exp(log_w[:, None, :] + log_beta - jnp.where(ok, out, 0.0)[..., None])
    weight = weight * jnp.where(ok, g, 0.0)[..., None]
    return jnp.sum(weight, axis=1), weight


log_integral.defvjp(_log_integral_fwd, _log_integral_bwd)


def t_part_given(table: EntryTable, prior: Prior, basis: TBasis, log_w: Array) -> TPart:
    """:func:`t_part` from its delta-free half ``basis`` (:func:`t_basis`)."""
    kinds = np.asarray(prior.kind)
    log_mix_d = log_w[:, None, :] + basis.log_beta
    # Spikes: t = 0 keeps only the s = 0 term (and needs no unbiased vote for rho);
    # t = 1 keeps only the last term, s = degree (and needs every unbiased vote on rho).
    # Their integrals are that one term: only the Dirichlet components need the sum.
    log_t_d = log_integral(log_w, basis.log_beta)
    log_t = []
    # In the prior's order (a mixed kernel interleaves the kinds).
    for kind, d in zip(kinds, dirichlet_index(prior)[1]):
        if kind == 0:
            log_t.append(log_t_d[:, d : d + 1])
            continue
        at = jnp.zeros_like(table.n) if kind == 1 else entry_degree(table, prior)
        ok = (table.u == 0) if kind == 1 else (table.u == table.m)
        term = jnp.take_along_axis(log_w, at[:, None], axis=1)[:, 0]
        log_t.append(jnp.where(ok, term, -jnp.inf)[:, None])
    return TPart(jnp.concatenate(log_t, axis=1), log_mix_d, basis.a_t, basis.b_t)


def cut_log_t(
    table: EntryTable,
    prior: Prior,
    basis: TBasis,
    frozen_w: Array,
    live: LivePairs,
    delta: Array | DifficultyDelta,
    one_star: Array,
    num_terms: int,
) -> Float[Array, "entries comps"]:
    """``t_part_given(...).log_t`` under the cut: every entry with its frozen weights
    ``frozen_w``, then the calibration entries (``live.entries``) again with weights that
    follow ``delta`` and ``1*``. Only the second, small part carries gradients to the
    weights, so the backward pass over every entry's terms has none to form."""
    log_t = t_part_given(table, prior, basis, jax.lax.stop_gradient(frozen_w)).log_t
    idx = jnp.minimum(live.entries, table.num_entries - 1)
    sub = table.take(idx)
    log_w = pair_log_weights(live.c, live.n, delta, one_star, num_terms)
    log_w = pick_weights(log_w, sub.rho, live.entry_pair[idx])
    part = TBasis(basis.log_beta[idx], basis.a_t[idx], basis.b_t[idx])
    return log_t.at[live.entries].set(t_part_given(sub, prior, part, log_w).log_t, mode="drop")


def t_part(table: EntryTable, prior: Prior, log_w: Array) -> TPart:
    """Per entry and component: log of the integral over t, and its Beta terms."""
    return t_part_given(table, prior, t_basis(table, prior, log_w.shape[1]), log_w)


def log_marginal(data: SPAData, rows: RowPart, t: TPart) -> Float[Array, "rows comps"]:
    """Exact log marginal likelihood of every row under every component."""
    return t.log_t[data.entry] + rows.log_rest


def log_likelihood(data: SPAData, prior: Prior, log_w: Array) -> Float[Array, " rows"]:
    """Exact log marginal likelihood of each row (the label distribution integrated out)."""
    terms = log_marginal(data, row_part(data, prior), t_part(data.table, prior, log_w))
    return logsumexp(terms, axis=-1)


def _term_weights(log_mix: Array) -> Array:
    """Normalised weights of the Beta terms; zero for a component with no valid term."""
    top = jnp.max(log_mix, axis=-1, keepdims=True)
    ok = jnp.isfinite(top)
    w = jnp.exp(log_mix - jnp.where(ok, top, 0.0))
    return jnp.where(ok, w / jnp.where(ok, jnp.sum(w, axis=-1, keepdims=True), 1.0), 0.0)


def dirichlet_index(prior: Prior) -> tuple[np.ndarray, np.ndarray]:
    """``(dirichlet, index)``: the Dirichlet components' positions among all components,
    and each component's position among the Dirichlet ones (0 for a spike)."""
    kinds = np.asarray(prior.kind)
    return np.flatnonzero(kinds == 0), np.maximum(np.cumsum(kinds == 0) - 1, 0)


def entry_moments_t(table: EntryTable, prior: Prior, t: TPart, order: int = 2) -> tuple[Array, ...]:
    """Posterior raw moments ``E[t^k]``, k = 1..order, per entry and component (exact:
    each Beta term's moments, weighted by the term's posterior weight; a spike's t is 0
    or 1)."""
    dtype = t.log_mix.dtype
    dirichlet, index = dirichlet_index(prior)
    mix = _term_weights(t.log_mix)  # (E, dcomps, terms)
    s = jnp.arange(t.log_mix.shape[-1], dtype=dtype)[None, None, :]
    degree = (entry_degree(table, prior) + table.m).astype(dtype)[:, None]
    a_t, b_t = t.a_t[:, dirichlet], t.b_t[:, dirichlet]
    total = (a_t + b_t + degree)[..., None]
    a = a_t[..., None] + table.u.astype(dtype)[:, None, None] + s
    kind = jnp.asarray(prior.kind)[None, :]
    spike = jnp.where(kind == 1, 0.0, 1.0).astype(dtype)  # t = 0 or t = 1 exactly
    out, ratio = [], jnp.ones_like(a)
    for k in range(order):  # Beta raw moments: prod_{i<k} (a + i) / (a + b + i)
        ratio = ratio * (a + k) / (total + k)
        moment = jnp.sum(mix * ratio, axis=-1)[:, index]  # (E, comps)
        out.append(jnp.where(kind == 0, moment, spike))
    return tuple(out)


def entry_mean_t(table: EntryTable, prior: Prior, t: TPart) -> Float[Array, "entries comps"]:
    """Posterior mean of t per entry and component."""
    return entry_moments_t(table, prior, t, order=1)[0]


def responsibilities(data: SPAData, rows: RowPart, t: TPart) -> Float[Array, "rows comps"]:
    """Posterior probability of each mixture component, per row."""
    return jax.nn.softmax(log_marginal(data, rows, t), axis=-1)


def posterior_mean_given(
    data: SPAData, rows: RowPart, t: TPart | None, mean_t: Array, resp: Array | None = None
) -> Float[Array, "rows classes"]:
    """Exact posterior mean of p for each row, from the two parts and ``entry_mean_t``
    (``resp``: the rows' :func:`responsibilities`, when already computed; ``t`` is then
    not needed)."""
    dtype = rows.a_rest.dtype
    if resp is None:
        resp = responsibilities(data, rows, t)
    is_rho = _is_rho(data.proposals, data.counts.shape[1])
    mean_r = rows.a_rest / jnp.sum(rows.a_rest, axis=-1, keepdims=True)
    m_t = mean_t[data.entry]
    mean_p = (1 - m_t)[..., None] * mean_r + m_t[..., None] * is_rho[:, None, :].astype(dtype)
    return jnp.sum(resp[..., None] * mean_p, axis=1)


def posterior_moments(data: SPAData, prior: Prior, log_w: Array) -> Float[Array, "rows classes"]:
    """Exact posterior mean of p for each row, given delta and 1* (through ``log_w``)."""
    t = t_part(data.table, prior, log_w)
    return posterior_mean_given(data, row_part(data, prior), t, entry_mean_t(data.table, prior, t))
