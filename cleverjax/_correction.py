"""CleverLabel: repair proposal-biased label distributions.

* **BC** (bias correction) inverts SPA's acceptance at a point estimate of delta:
  ``B = clip((c[rho]/N - delta) / (one_star - delta), 0, 1)``; the other classes share
  ``1 - B`` in proportion to their counts, ``c[k] / max(1, N - c[rho])``.
* **CB** (class blending) mixes an estimate with the class-blending matrix row of its most
  likely class: ``mu * est + (1 - mu) * C[argmax(est)]``.
* **CleverLabel** is BC then CB.

Core functions work on any leading batch shape ``(..., classes)``; the public wrappers
validate a stack of images ``(images, classes)``.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from . import _checks
from ._checks import ArrayIn
from ._random import as_typed_key

CLASS_MATRIX_ATOL = 0.01
"""Rows of a class-blending matrix must sum to 1 within this (published matrices are
rounded to 3 decimals); they are renormalised."""

FILL_PROBABILITY = 0.9
"""The probability of filling every class-blending row that :class:`EmptyRowsWarning`'s
estimate of calibration images aims at."""


class EmptyRowsWarning(UserWarning):
    """Some classes have no calibration image, so their class-blending rows are the
    fallback; the message says how many calibration images would fill every row."""


def _dirichlet_smoothed_shares(counts: np.ndarray) -> np.ndarray:
    """Posterior-mean shares under the symmetric Dirichlet prior of maximum marginal
    likelihood, its concentration searched on a log grid (its top stands for "equal")."""
    values, multiplicity = np.unique(counts, return_counts=True)
    total, size = counts.sum(), counts.size

    def log_likelihood(a: float) -> float:
        per_class = sum(
            w * (math.lgamma(v + a) - math.lgamma(a)) for v, w in zip(values, multiplicity)
        )
        return per_class + math.lgamma(size * a) - math.lgamma(total + size * a)

    grid = np.logspace(-2, 4, 121)
    a = grid[int(np.argmax([log_likelihood(float(g)) for g in grid]))]
    return (counts + a) / (total + size * a)


def calibration_images_to_fill(
    class_counts: ArrayIn, *, probability: float = FILL_PROBABILITY
) -> int:
    """Calibration images that fill every class-blending row with about ``probability``.

    A coupon-collector estimate from the observed class shares. The shares are the
    posterior means ``(n_k + a) / (m + K a)`` under a symmetric Dirichlet(a) prior whose
    ``a`` maximises the Dirichlet-multinomial likelihood of the observed counts ``n_k``
    (empirical Bayes): a class not seen yet gets a small share, not none, and balanced
    counts are pulled towards equal shares. With ``M`` images, a class of share ``q`` is
    missed with probability ``exp(-M q)`` (Poisson approximation, classes independent),
    so every row is filled with probability ``prod_k (1 - exp(-M q_k))``; the smallest
    ``M`` that reaches ``probability`` is returned. For 100 balanced classes this gives
    686 images, where the exact coupon-collector probability of 686 images is 0.903.
    The data cannot tell how rare an unseen class is, so with very unequal classes the
    estimate is low.

    Args:
        class_counts: ``(classes,)`` calibration images per most likely class.
        probability: keyword-only; target probability, in ``(0, 1)``.

    Returns:
        The number of calibration images.

    Examples:
        >>> import cleverjax as cj
        >>> cj.calibration_images_to_fill([1000] * 10)  # ten balanced classes
        46
    """
    counts = np.asarray(class_counts, np.float64)
    if counts.ndim != 1 or counts.size < 1 or (counts < 0).any():
        raise ValueError(
            f"`class_counts` must be a 1-D array of non-negative counts; got {counts!r}"
        )
    if not 0 < probability < 1:
        raise ValueError(f"`probability` must lie in (0, 1); got {probability}")
    shares = _dirichlet_smoothed_shares(counts)

    def filled(m: int) -> bool:
        return bool(np.sum(np.log1p(-np.exp(-m * shares))) >= math.log(probability))

    # Each factor at least probability**(1/K) is enough: an upper bound to bisect below.
    hi = math.ceil(-math.log1p(-(probability ** (1 / counts.size))) / shares.min())
    lo = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if filled(mid) else (mid, hi)
    return hi


# ----------------------------------------------------------------------------------
# Core maths (batched over leading dimensions); jitted, so that each is one small
# program rather than a dozen operations run (and compiled) one by one
# ----------------------------------------------------------------------------------


def _onehot(index: Array, num_classes: int, dtype) -> Array:
    classes = jnp.arange(num_classes, dtype=jnp.int32).reshape((1,) * index.ndim + (-1,))
    return (index[..., None].astype(jnp.int32) == classes).astype(dtype)


@jax.jit
def _bias_correction(counts: Array, rho: Array, delta, one_star) -> Array:
    dtype = jnp.result_type(float)
    num_classes = counts.shape[-1]
    c = counts.astype(dtype)
    total = jnp.sum(c, axis=-1)
    on_rho = _onehot(rho, num_classes, dtype)
    c_rho = jnp.sum(c * on_rho, axis=-1)
    share = c_rho / jnp.where(total > 0, total, 1)
    b = jnp.clip((share - delta) / (one_star - delta), 0, 1)
    rest = c * (1 - on_rho) / jnp.maximum(1, total - c_rho)[..., None]
    est = (1 - b)[..., None] * rest + b[..., None] * on_rho
    uniform = jnp.full_like(est, 1 / num_classes)
    return jnp.where((total > 0)[..., None], est, uniform)


@jax.jit
def _class_blending(estimate: Array, class_matrix: Array, mu) -> Array:
    row = class_matrix[jnp.argmax(estimate, axis=-1)]
    return mu * estimate + (1 - mu) * row


@jax.jit
def _cleverlabel(counts, rho, class_matrix, delta, one_star, mu, initial):
    """BC then CB. With ``initial`` unbiased counts (n0 per image), the data part is
    ``N/(N+n0) * BC + n0/(N+n0) * soft(initial)``; CB uses the row of argmax(BC), or of
    the proposal where no biased annotation exists (as the reference implementation)."""
    dtype = jnp.result_type(float)
    est = _bias_correction(counts, rho, delta, one_star)
    n_biased = jnp.sum(counts, axis=-1).astype(dtype)
    row_class = jnp.where(n_biased > 0, jnp.argmax(est, axis=-1), rho)
    row = class_matrix[row_class]
    if initial is None:
        data = est
        weight = jnp.where(n_biased > 0, mu, 0)
    else:
        n0 = jnp.sum(initial, axis=-1).astype(dtype)
        init = initial.astype(dtype) / jnp.where(n0 > 0, n0, 1)[..., None]
        total = n_biased + n0
        w = n_biased / jnp.where(total > 0, total, 1)
        data = w[..., None] * est + (1 - w)[..., None] * init
        weight = jnp.where(total > 0, mu, 0)
    return weight[..., None] * data + (1 - weight)[..., None] * row


@jax.jit
def _soft(counts: Array) -> Array:
    dtype = jnp.result_type(float)
    c = counts.astype(dtype)
    total = jnp.sum(c, axis=-1, keepdims=True)
    uniform = jnp.full_like(c, 1 / c.shape[-1])
    return jnp.where(total > 0, c / jnp.where(total > 0, total, 1), uniform)


# ----------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------


def _validate_counts_proposals(counts, proposals, name="counts"):
    counts = _checks.as_counts(name, counts)
    n, num_classes = counts.shape
    if num_classes < 2:
        raise ValueError(f"`{name}` must have at least 2 classes (columns); got {counts.shape}")
    proposals = _checks.as_int_array("proposals", proposals, ndim=1)
    _checks.check_shape("proposals", proposals, (n,), hint="give one proposed class per image")
    proposals = _checks.check_labels("proposals", proposals, num_classes)
    return counts, proposals


def _validate_delta(delta, one_star):
    one_star = _checks.check_range(
        "one_star", _checks.as_float_array("one_star", one_star, ndim=0), 0.0, 1.0, lo_open=True
    )
    delta = _checks.as_float_array("delta", delta, ndim=0)
    delta = _checks.check_range("delta", delta, 0.0, one_star, hi_open=True)
    return delta, one_star


def _validate_class_matrix(class_matrix, num_classes: int):
    matrix = _checks.as_float_array("class_matrix", class_matrix, ndim=2)
    _checks.check_shape(
        "class_matrix", matrix, (num_classes, num_classes), hint="one row per class"
    )
    return _checks.check_simplex_rows("class_matrix", matrix, atol=CLASS_MATRIX_ATOL)


def _validate_mu(mu):
    return _checks.check_range("mu", _checks.as_float_array("mu", mu, ndim=0), 0.0, 1.0)


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------


def bias_correction(
    counts: ArrayIn,
    proposals: ArrayIn,
    *,
    delta: float = 0.1,
    one_star: float = 0.99,
) -> Float[Array, "images classes"]:
    """BC: invert SPA's acceptance at a point estimate of delta.

    ``B = clip((c[rho]/N - delta) / (one_star - delta), 0, 1)`` becomes the estimate on
    the proposal; every other class gets ``(1 - B) * c[k] / max(1, N - c[rho])``.

    Args:
        counts: ``(images, classes)`` counts of proposal-biased annotations.
        proposals: ``(images,)`` the class proposed with each image.
        delta: keyword-only; acceptance offset, in ``[0, one_star)`` (paper: 0.1).
        one_star: keyword-only; 1*, in ``(0, 1]`` (paper: 0.99).

    Returns:
        ``(images, classes)`` rows on the simplex. An image without annotations gets the
        uniform distribution (no information).

    Raises:
        ValueError: on negative or non-integer counts, proposals outside ``[0, K)``,
            mismatched lengths, or ``delta`` outside ``[0, one_star)`` (the formula
            divides by ``one_star - delta``).

    Examples:
        >>> import numpy as np, cleverjax as cj
        >>> est = cj.bias_correction([[6, 3, 1]], [0], delta=0.2, one_star=1.0)
        >>> np.round(np.asarray(est, float), 3).tolist()
        [[0.5, 0.375, 0.125]]

    References:
        Schmarje et al., "Label Smarter, Not Harder: CleverLabel" (2023), Sec. 3.
    """
    counts, proposals = _validate_counts_proposals(counts, proposals)
    delta, one_star = _validate_delta(delta, one_star)
    return _bias_correction(counts, proposals, delta, one_star)


def class_blending(
    estimate: ArrayIn,
    class_matrix: ArrayIn,
    *,
    mu: float = 0.75,
) -> Float[Array, "images classes"]:
    """CB: blend each estimate with the class-blending row of its most likely class.

    ``mu * est + (1 - mu) * C[argmax(est)]`` (lowest index on ties).

    Args:
        estimate: ``(images, classes)`` label distributions.
        class_matrix: ``(classes, classes)``; row ``k`` is the mean soft label of images
            whose most likely class is ``k`` (see :func:`estimate_class_matrix`). Rows must
            sum to 1 within 0.01 and are renormalised.
        mu: keyword-only; weight of the estimate, in ``[0, 1]`` (paper: 0.75).

    Returns:
        ``(images, classes)`` rows on the simplex.

    Examples:
        >>> import numpy as np, cleverjax as cj
        >>> out = cj.class_blending([[0.6, 0.4]], [[0.8, 0.2], [0.1, 0.9]], mu=0.5)
        >>> np.round(np.asarray(out, float), 3).tolist()
        [[0.7, 0.3]]
    """
    est = _checks.check_simplex_rows(
        "estimate", _checks.as_float_array("estimate", estimate, ndim=2)
    )
    matrix = _validate_class_matrix(class_matrix, est.shape[1])
    return _class_blending(est, matrix, _validate_mu(mu))


def cleverlabel(
    counts: ArrayIn,
    proposals: ArrayIn,
    class_matrix: ArrayIn,
    *,
    delta: float = 0.1,
    one_star: float = 0.99,
    mu: float = 0.75,
    initial: ArrayIn | None = None,
) -> Float[Array, "images classes"]:
    """CleverLabel: bias correction (BC), then class blending (CB).

    With ``initial`` (counts of ``n0`` unbiased annotations per image, e.g. the initial
    supervision), the data part becomes ``N/(N+n0) * BC + n0/(N+n0) * initial/n0``, as in
    the paper's "inclusion of initial labels". CB uses the row of ``argmax(BC)``; an
    image without biased annotations uses the row of its proposal, and an image without
    any annotation gets that row alone.

    Args:
        counts: ``(images, classes)`` counts of proposal-biased annotations.
        proposals: ``(images,)`` proposed classes.
        class_matrix: ``(classes, classes)`` class-blending matrix.
        delta: keyword-only; delta for BC (paper: 0.1 whatever the true delta).
        one_star: keyword-only; 1* (paper: 0.99).
        mu: keyword-only; CB weight (paper: 0.75).
        initial: keyword-only; optional ``(images, classes)`` counts of unbiased annotations.

    Returns:
        ``(images, classes)`` repaired label distributions.

    Examples:
        >>> import jax.numpy as jnp, cleverjax as cj
        >>> C = jnp.array([[0.9, 0.1], [0.2, 0.8]])
        >>> out = cj.cleverlabel(jnp.array([[8, 2], [0, 0]]), jnp.array([0, 1]), C)
        >>> out.shape
        (2, 2)
    """
    counts, proposals = _validate_counts_proposals(counts, proposals)
    delta, one_star = _validate_delta(delta, one_star)
    matrix = _validate_class_matrix(class_matrix, counts.shape[1])
    mu = _validate_mu(mu)
    init = None
    if initial is not None:
        init = _checks.as_counts("initial", initial)
        _checks.check_shape("initial", init, counts.shape, hint="same shape as `counts`")
    return _cleverlabel(counts, proposals, matrix, delta, one_star, mu, init)


def soft_labels(counts: ArrayIn) -> Float[Array, "images classes"]:
    """Normalise annotation counts to label distributions (uniform for an image without
    annotations).

    Examples:
        >>> import cleverjax as cj
        >>> cj.soft_labels([[3, 1], [0, 0]]).tolist()
        [[0.75, 0.25], [0.5, 0.5]]
    """
    return _soft(_checks.as_counts("counts", counts))


def sample_annotations(
    key: PRNGKeyArray, p: ArrayIn, *, num_annotations: ArrayIn
) -> Int[Array, "images classes"]:
    """Counts of unbiased annotations (no proposal shown): Multinomial(N, p) per image.

    This is SPA with ``delta = 0`` and ``one_star = 1``, where acceptance equals ``p[rho]``
    and the biased distribution is ``p`` itself.

    Examples:
        >>> import jax, cleverjax as cj
        >>> cj.sample_annotations(jax.random.key(0), [[1.0, 0.0]], num_annotations=5).tolist()
        [[5, 0]]
    """
    from ._spa import simulate_counts

    p_arr = _checks.as_float_array("p", p, ndim=2)
    anchor = jnp.zeros((p_arr.shape[0],), jnp.int32)
    return simulate_counts(
        key, p_arr, anchor, num_annotations=num_annotations, delta=0.0, one_star=1.0
    )


def estimate_class_matrix(
    calibration: ArrayIn,
    *,
    fallback: Literal["identity", "uniform", "pooled"] = "identity",
) -> Float[Array, "classes classes"]:
    """The class-blending matrix from calibration images with unbiased annotations.

    Row ``k`` is the mean soft label of the calibration images whose most likely class is
    ``k`` (lowest index on ties). The paper uses 100 random images with 10 unbiased
    annotations each (:func:`calibration_sample`). A class that no calibration image
    represents gets the ``fallback`` row: ``"identity"`` (its one-hot vector, so CB only
    sharpens; default), ``"uniform"``, or ``"pooled"`` (the mean soft label of all
    calibration images). Such empty rows are common with many classes: with 100 classes
    and 100 calibration images about 37 % of them are empty.

    Args:
        calibration: ``(images, classes)`` integer counts (images without annotations are
            ignored) or soft labels (float rows on the simplex).
        fallback: keyword-only; the row for classes with no calibration image.

    Returns:
        ``(classes, classes)`` matrix with rows on the simplex.

    Warns:
        EmptyRowsWarning: when a row has no calibration image (not under ``jit``, where
            the counts are not known), with the number of calibration images that would
            fill every row with probability 0.9 (:func:`calibration_images_to_fill`).

    Examples:
        >>> import warnings, cleverjax as cj
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     C = cj.estimate_class_matrix([[9, 1, 0], [7, 3, 0], [2, 8, 0]])
        >>> [[round(v, 2) for v in row] for row in C.tolist()]
        [[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0.0, 0.0, 1.0]]
        >>> print(caught[0].message)  # doctest: +NORMALIZE_WHITESPACE
        1 of 3 class-blending rows (class 2) have no calibration image and get the
        'identity' fallback row; about 11 calibration images (not 3) would fill every row
        with probability 0.9
    """
    _checks.check_choice("fallback", fallback, ("identity", "uniform", "pooled"))
    raw = jnp.asarray(calibration)
    from_counts = bool(jnp.issubdtype(raw.dtype, jnp.integer))
    if from_counts:
        values = _checks.as_counts("calibration", raw)
    else:
        values = _checks.check_simplex_rows(
            "calibration", _checks.as_float_array("calibration", raw, ndim=2)
        )
    if values.shape[1] < 2:
        raise ValueError(f"`calibration` must have at least 2 classes; got {values.shape}")
    matrix, sizes = _class_matrix(values, fallback=fallback, from_counts=from_counts)
    if not _checks.is_traced(sizes):
        _warn_empty_rows(np.asarray(sizes), fallback)
    return matrix


@functools.partial(jax.jit, static_argnames=("fallback", "from_counts"))
def _class_matrix(values: Array, *, fallback: str, from_counts: bool) -> tuple[Array, Array]:
    """The class-blending matrix and the calibration images behind each row."""
    if from_counts:
        used = jnp.sum(values, axis=1) > 0
        soft = _soft(values)
    else:
        soft, used = values, jnp.ones(values.shape[0], bool)
    num_classes = soft.shape[1]
    member = _onehot(jnp.argmax(soft, axis=1), num_classes, soft.dtype) * used[:, None].astype(
        soft.dtype
    )
    totals = member.T @ soft
    sizes = jnp.sum(member, axis=0)
    if fallback == "identity":
        fill = jnp.eye(num_classes, dtype=soft.dtype)
    elif fallback == "uniform":
        fill = jnp.full((num_classes, num_classes), 1 / num_classes, soft.dtype)
    else:
        weights = used.astype(soft.dtype)
        pooled = jnp.sum(soft * weights[:, None], axis=0) / jnp.maximum(jnp.sum(weights), 1)
        fill = jnp.broadcast_to(pooled, (num_classes, num_classes))
    mean = totals / jnp.where(sizes > 0, sizes, 1)[:, None]
    return jnp.where((sizes > 0)[:, None], mean, fill), sizes


def _warn_empty_rows(sizes: np.ndarray, fallback: str) -> None:
    empty = np.flatnonzero(sizes == 0)
    if empty.size == 0:
        return
    shown = ", ".join(str(int(k)) for k in empty[:10]) + (", ..." if empty.size > 10 else "")
    need = calibration_images_to_fill(sizes)
    warnings.warn(
        f"{empty.size} of {sizes.size} class-blending rows (class{'es' if empty.size > 1 else ''} "
        f"{shown}) have no calibration image and get the {fallback!r} fallback row; about "
        f"{need} calibration images (not {int(sizes.sum())}) would fill every row with "
        f"probability {FILL_PROBABILITY}",
        EmptyRowsWarning,
        stacklevel=3,
    )


class Calibration(NamedTuple):
    """Calibration images drawn by :func:`calibration_sample`.

    Attributes:
        indices: ``(calibration_images,)`` indices of the chosen images.
        counts: ``(calibration_images, classes)`` counts of their unbiased annotations.
    """

    indices: Int[Array, " calibration"]
    counts: Int[Array, "calibration classes"]


def calibration_sample(
    key: PRNGKeyArray, p: ArrayIn, *, num_images: int = 100, num_annotations: int = 10
) -> Calibration:
    """The paper's calibration protocol: random images annotated without proposals.

    Draws ``num_images`` distinct images uniformly and ``num_annotations`` unbiased
    annotations for each from the ground truth ``p``.

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=500)
        >>> cal = cj.calibration_sample(jax.random.key(1), p)
        >>> cal.counts.shape, int(cal.counts.sum())
        ((100, 3), 1000)
    """
    p_arr = _checks.check_simplex_rows("p", _checks.as_float_array("p", p, ndim=2))
    n = p_arr.shape[0]
    if not isinstance(num_images, (int, np.integer)) or not 1 <= num_images <= n:
        raise ValueError(
            f"`num_images` must be an int in [1, {n}] (the number of images); got {num_images!r}"
        )
    k_pick, k_ann = jax.random.split(as_typed_key(key))
    idx, chosen = _pick_images(k_pick, p_arr, int(num_images))
    counts = sample_annotations(k_ann, chosen, num_annotations=num_annotations)
    return Calibration(idx, counts)


@functools.partial(jax.jit, static_argnums=(2,))
def _pick_images(key, p: Array, num_images: int) -> tuple[Array, Array]:
    idx = jax.random.choice(key, p.shape[0], (num_images,), replace=False).astype(jnp.int32)
    return idx, p[idx]


class DeltaEstimate(NamedTuple):
    """Point estimate of SPA's acceptance parameters from calibration images.

    Attributes:
        delta: intercept of acceptance rate against ``p[proposal]``.
        one_star: intercept plus slope.
        delta_se: jackknife standard error of ``delta``.
        one_star_se: jackknife standard error of ``one_star``.
        num_images: images used (those with both kinds of annotation).
    """

    delta: float
    one_star: float
    delta_se: float
    one_star_se: float
    num_images: int


def estimate_delta(
    unbiased_counts: ArrayIn,
    biased_counts: ArrayIn,
    proposals: ArrayIn,
    *,
    correct_attenuation: bool = True,
) -> DeltaEstimate:
    """Estimate delta and 1* from images annotated both without and with proposals.

    Under SPA the acceptance rate of image x is ``delta + (one_star - delta) * p[rho]``:
    linear in ``p[rho]``. Regressing the observed acceptance rate on the unbiased estimate
    of ``p[rho]`` gives delta (intercept) and 1* (intercept + slope). The unbiased estimate
    is noisy, which flattens a plain regression; with ``correct_attenuation`` the
    regressor's variance is reduced by its estimated sampling variance
    ``x (1 - x) / (n_u - 1)`` (a method-of-moments errors-in-variables correction).
    Standard errors are jackknife (leave one image out).

    Args:
        unbiased_counts: ``(images, classes)`` counts of annotations without a proposal.
        biased_counts: ``(images, classes)`` counts of annotations with the proposal.
        proposals: ``(images,)`` proposed classes.
        correct_attenuation: keyword-only; correct for noise in the regressor.

    Returns:
        A :class:`DeltaEstimate`. Only images with at least one biased annotation and (two
        with the correction, one without) unbiased annotations are used; at least 3 must
        remain, and their ``p[rho]`` estimates must vary.

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "CIFAR10H", num_images=2000)
        >>> rho = cj.propose(jax.random.key(1), p, accuracy=0.7)
        >>> u = cj.sample_annotations(jax.random.key(2), p, num_annotations=10)
        >>> b = cj.simulate_counts(jax.random.key(3), p, rho, num_annotations=10, delta=0.3)
        >>> est = cj.estimate_delta(u, b, rho)
        >>> abs(est.delta - 0.3) < 4 * est.delta_se
        True
    """
    biased, proposals = _validate_counts_proposals(biased_counts, proposals, "biased_counts")
    unbiased = _checks.as_counts("unbiased_counts", unbiased_counts)
    _checks.check_shape("unbiased_counts", unbiased, biased.shape, hint="same as biased_counts")
    min_u = 2 if correct_attenuation else 1
    m, var_x, intercept, slope, delta_se, star_se = _delta_regression(
        unbiased, biased, proposals, correct_attenuation=correct_attenuation
    )
    m = int(m)
    if m < 3:
        raise ValueError(
            f"estimate_delta needs at least 3 images with >= 1 biased and >= "
            f"{min_u} unbiased annotations; got {m}"
        )
    if float(var_x) <= 0:
        raise ValueError(
            "estimate_delta needs images whose proposal probability varies; "
            "all unbiased estimates of p[proposal] are equal"
        )
    return DeltaEstimate(
        delta=float(intercept),
        one_star=float(intercept + slope),
        delta_se=float(delta_se),
        one_star_se=float(star_se),
        num_images=m,
    )


@functools.partial(jax.jit, static_argnames=("correct_attenuation",))
def _delta_regression(unbiased: Array, biased: Array, proposals: Array, *, correct_attenuation):
    """Images used, the variance of their ``x``, intercept, slope and the jackknife
    standard errors of delta and 1* (see :func:`estimate_delta`), as one program: the
    images not used are masked out of every sum instead of dropped."""
    dtype = jnp.result_type(float)
    n_u = jnp.sum(unbiased, axis=1).astype(dtype)
    n_b = jnp.sum(biased, axis=1).astype(dtype)
    on_rho = _onehot(proposals, biased.shape[1], dtype)
    x = jnp.sum(unbiased.astype(dtype) * on_rho, axis=1) / jnp.maximum(n_u, 1)
    y = jnp.sum(biased.astype(dtype) * on_rho, axis=1) / jnp.maximum(n_b, 1)
    keep = (n_b > 0) & (n_u >= (2 if correct_attenuation else 1))
    w = keep.astype(dtype)
    m = jnp.sum(w)
    if correct_attenuation:
        noise = jnp.where(keep, x * (1 - x) / jnp.where(keep, n_u - 1, 1), 0.0)
    else:
        noise = jnp.zeros_like(x)

    def mean(v):
        return jnp.sum(w * v) / jnp.maximum(m, 1)

    mx, my = mean(x), mean(y)
    var_x = mean((x - mx) ** 2)
    slope = mean((x - mx) * (y - my)) / (var_x - mean(noise))
    intercept = my - slope * mx

    # Jackknife: leave image i out, vectorised through the sums.
    sx, sy, sxx, sxy, sn = (jnp.sum(w * v) for v in (x, y, x * x, x * y, noise))
    k = m - 1
    mx_i = (sx - x) / k
    my_i = (sy - y) / k
    cov = (sxy - x * y) / k - mx_i * my_i
    var = (sxx - x * x) / k - mx_i * mx_i - (sn - noise) / k
    slope_i = cov / var
    icpt_i = my_i - slope_i * mx_i
    star_i = icpt_i + slope_i

    def jack_se(values):
        values = jnp.where(keep, values, 0.0)
        return jnp.sqrt(k / m * jnp.sum(w * (values - mean(values)) ** 2))

    return m, var_x, intercept, slope, jack_se(icpt_i), jack_se(star_i)
