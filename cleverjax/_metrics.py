"""Metrics, annotation budget and the paper's annotation-strategy guideline."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _checks
from ._checks import ArrayIn

KL_EPSILON = 1e-5
"""The paper's clipping bound for KL: both distributions are clipped to [eps, 1 - eps]."""


def _kl_paper(gt: Array, est: Array) -> Array:
    y = jnp.clip(gt, KL_EPSILON, 1 - KL_EPSILON)
    x = jnp.clip(est, KL_EPSILON, 1 - KL_EPSILON)
    return jnp.sum(y * jnp.log(y / x), axis=-1)


def _kl_exact(gt: Array, est: Array) -> Array:
    safe_est = jnp.where(est > 0, est, 1)
    safe_gt = jnp.where(gt > 0, gt, 1)
    terms = jnp.where(gt > 0, gt * (jnp.log(safe_gt) - jnp.log(safe_est)), 0)
    missing = jnp.any((gt > 0) & (est <= 0), axis=-1)
    return jnp.where(missing, jnp.inf, jnp.sum(terms, axis=-1))


def kl_divergence(
    gt: ArrayIn,
    estimate: ArrayIn,
    *,
    exact: bool = False,
    reduce: bool = True,
) -> Float[Array, ""] | Float[Array, " images"]:
    """KL(gt || estimate) between label distributions.

    By default the paper's convention (and the DCIC benchmark's): both arguments are
    clipped to ``[1e-5, 1 - 1e-5]`` without renormalising, then
    ``sum_k gt_k log(gt_k / est_k)``. With ``exact=True`` the plain definition is used:
    terms with ``gt_k = 0`` vanish and an estimate of 0 where ``gt_k > 0`` gives ``inf``.

    Args:
        gt: ``(images, classes)`` reference distributions.
        estimate: ``(images, classes)`` estimated distributions.
        exact: keyword-only; the plain definition instead of the paper's clipped one.
        reduce: keyword-only; return the mean over images (default) or one value each.

    Examples:
        >>> import cleverjax as cj
        >>> round(float(cj.kl_divergence([[0.5, 0.5]], [[0.9, 0.1]], exact=True)), 4)
        0.5108
    """
    g = _checks.as_float_array("gt", gt, ndim=2)
    e = _checks.as_float_array("estimate", estimate, ndim=2)
    _checks.check_shape("estimate", e, g.shape, hint="same shape as `gt`")
    if not (_checks.is_traced(g) or _checks.is_traced(e)):
        bad, value = _kl_checked(g, e, exact=exact, reduce=reduce)
        if _checks.flag_down(bad):
            return value
    # Under the caller's jit, or to say which entry is bad.
    g = _checks.check_values(g, _checks.not_density(g), "`gt` must be finite and >= 0")
    e = _checks.check_values(e, _checks.not_density(e), "`estimate` must be finite and >= 0")
    return _kl_checked(g, e, exact=exact, reduce=reduce)[1]


@functools.partial(jax.jit, static_argnames=("exact", "reduce"))
def _kl_checked(g: Array, e: Array, *, exact: bool, reduce: bool) -> tuple[Array, Array]:
    """Whether an input is not finite or negative, and the KL (one compiled program)."""
    bad = jnp.any(_checks.not_density(g)) | jnp.any(_checks.not_density(e))
    per_image = _kl_exact(g, e) if exact else _kl_paper(g, e)
    return bad, jnp.mean(per_image) if reduce else per_image


def budget(
    *,
    num_annotations: ArrayIn,
    speedup: ArrayIn = 1.0,
    fraction_annotated: ArrayIn = 1.0,
    initial: ArrayIn = 0.0,
) -> Array:
    """Annotation budget per image, in units of one unaided annotation.

    ``initial + fraction_annotated * num_annotations / speedup``, where ``speedup`` S is how
    much faster an annotation with a proposal is (paper: 1, 2.5 or 10) and ``initial`` is
    the initial supervision per image. Arguments broadcast.

    Examples:
        >>> import cleverjax as cj
        >>> round(float(cj.budget(num_annotations=10, speedup=2.5, initial=0.1)), 4)
        4.1
    """
    n = _checks.as_float_array("num_annotations", num_annotations, ndim=(0, 1))
    s = _checks.as_float_array("speedup", speedup, ndim=(0, 1))
    f = _checks.as_float_array("fraction_annotated", fraction_annotated, ndim=(0, 1))
    i = _checks.as_float_array("initial", initial, ndim=(0, 1))
    n = _checks.check_range("num_annotations", n, 0.0, np.inf)
    s = _checks.check_range("speedup", s, 0.0, np.inf, lo_open=True)
    f = _checks.check_range("fraction_annotated", f, 0.0, 1.0)
    i = _checks.check_range("initial", i, 0.0, np.inf)
    return i + f * n / s


class Guideline(NamedTuple):
    """The annotation strategy recommended by the paper's Fig. 5.

    Attributes:
        use_proposals: show proposals to annotators.
        use_cleverlabel: repair the biased labels with CleverLabel.
        use_class_blending: apply class blending (without proposals: to the plain labels).
        advice: one sentence for humans.
    """

    use_proposals: bool
    use_cleverlabel: bool
    use_class_blending: bool
    advice: str


def annotation_guideline(
    *, bias_acceptable: bool, speedup: float, speedup_threshold: float = 3.0
) -> Guideline:
    """Whether to annotate with proposals, following the paper's guideline (Fig. 5).

    * Bias acceptable: use proposals (CleverLabel still improves the labels).
    * Bias not acceptable and the speedup from proposals above ~3: proposals + CleverLabel.
    * Otherwise: no proposals; blend the plain labels with the class matrix (CB).

    Examples:
        >>> import cleverjax as cj
        >>> cj.annotation_guideline(bias_acceptable=False, speedup=10.0).use_cleverlabel
        True
    """
    if not speedup > 0:
        raise ValueError(f"`speedup` must be > 0; got {speedup}")
    if bias_acceptable:
        return Guideline(
            True,
            True,
            True,
            "Use proposals; CleverLabel further reduces the remaining bias at no annotation cost.",
        )
    if speedup > speedup_threshold:
        return Guideline(
            True,
            True,
            True,
            f"Use proposals and repair the labels with "
            f"CleverLabel: a speedup of {speedup:g} buys more annotations than "
            f"the bias costs.",
        )
    return Guideline(
        False,
        False,
        True,
        f"Annotate without proposals and apply class "
        f"blending: a speedup of {speedup:g} does not pay for the bias.",
    )
