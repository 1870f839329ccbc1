"""Inference for the Bayesian SPA model: SVI (optax), the exact collapsed path, NUTS,
posterior predictive checks and planning of calibration data.

What identifies delta: the acceptance rate of an image is ``delta + (1* - delta) p[rho]``,
so delta is pinned down only where something independent tells us ``p[rho]``: unbiased
annotations of the same images (the paper's calibration design: 100 images with 10
annotations each), or *probe* images whose proposal was drawn at random (for them
``E[p[rho]] = 1/K`` whatever the image). From biased counts alone delta trades off
against the prior on ``p[rho]``; :func:`fit` then warns and, by default, reports the
prior of delta instead of a confident but unsupported number.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
import pandas as pd
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Float, PRNGKeyArray
from numpyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value
from tqdm import tqdm

from . import _checks
from ._checks import ArrayIn
from ._correction import calibration_sample
from ._model import (
    AnnotatorData,
    ModelConfig,
    Prior,
    QuadratureELBO,
    SPAData,
    _global_sites,
    calibrated,
    component_kinds,
    component_terms,
    compress,
    global_guide,
    log_likelihood,
    log_weights_annotators,
    posterior_moments,
    prior_from_params,
    spa_model,
)
from ._random import key_data
from ._spa import propose, simulate_counts


class IdentifiabilityWarning(UserWarning):
    """Delta is not identified by the data given (no calibration images, no probes)."""


class ConvergenceWarning(UserWarning):
    """SVI stopped at ``max_steps`` before the ELBO reached a plateau."""


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


class FitResult(NamedTuple):
    """Result of :func:`fit`.

    Attributes:
        delta: posterior mean of delta.
        delta_interval: equal-tailed credible interval of delta (``level``).
        one_star: posterior mean of 1* (the fixed value when not learned).
        one_star_interval: its credible interval (both ends equal when fixed).
        posterior_mean: ``(images, classes)`` posterior mean of every image's label
            distribution: the repaired labels (averaged over the posterior of delta).
        lower: ``(images, classes)`` lower end of each per-image credible interval.
        upper: ``(images, classes)`` upper end.
        level: credible level of the intervals (default 0.9).
        losses: ``(steps,)`` negative ELBO per SVI step (the warm-up fit for NUTS).
        converged: whether the ELBO plateau rule stopped SVI before ``max_steps``.
        identified: whether the data identify delta (calibration images or probes).
        delta_samples: ``(draws,)`` posterior draws of delta.
        prior: the learned prior (empirical Bayes).
        params: all fitted parameters (NumPyro parameter names to arrays).
        ppc: posterior predictive check of the acceptance rate.
        method: ``"svi"`` or ``"nuts"``.
        seconds: wall time, compilation included.
        step_seconds: wall time of one SVI step, compilation excluded (the mean over
            every compiled chunk of steps after the first; the first chunk's, compilation
            included, when SVI stopped there).
    """

    delta: float
    delta_interval: tuple[float, float]
    one_star: float
    one_star_interval: tuple[float, float]
    posterior_mean: Float[Array, "images classes"]
    lower: Float[Array, "images classes"]
    upper: Float[Array, "images classes"]
    level: float
    losses: Float[Array, " steps"]
    converged: bool
    identified: bool
    delta_samples: Float[Array, " draws"]
    prior: Prior
    params: dict
    ppc: PosteriorPredictive | None
    method: str
    seconds: float
    step_seconds: float


# ----------------------------------------------------------------------------------
# Validation and data preparation
# ----------------------------------------------------------------------------------


class _Prepared(NamedTuple):
    data: SPAData
    inverse: np.ndarray
    counts: np.ndarray
    unbiased: np.ndarray
    proposals: np.ndarray
    probe: np.ndarray
    identified: bool


def _prepare(counts, proposals, unbiased_counts, probe) -> _Prepared:
    c = np.asarray(_checks.as_counts("counts", counts))
    n, k = c.shape
    if k < 2:
        raise ValueError(f"`counts` must have at least 2 classes (columns); got {c.shape}")
    if n == 0:
        raise ValueError("`counts` must hold at least one image; got 0 rows")
    rho = _checks.as_int_array("proposals", proposals, ndim=1)
    _checks.check_shape("proposals", rho, (n,), hint="give one proposed class per image")
    rho = np.asarray(_checks.check_labels("proposals", rho, k))
    if unbiased_counts is None:
        u = np.zeros_like(c)
    else:
        u = np.asarray(_checks.as_counts("unbiased_counts", unbiased_counts))
        _checks.check_shape(
            "unbiased_counts",
            jnp.asarray(u),
            (n, k),
            hint="same shape as `counts`; zero rows for images without unbiased annotations",
        )
    if probe is None:
        pr = np.zeros(n, bool)
    else:
        pr = np.asarray(probe)
        if pr.shape != (n,):
            raise ValueError(f"`probe` must have shape ({n},); got {pr.shape}")
        if pr.dtype != bool:
            raise TypeError(f"`probe` must be a boolean array; got dtype {pr.dtype}")
    nb, nu = c.sum(axis=1), u.sum(axis=1)
    empty = (nb + nu) == 0
    if empty.any():
        raise ValueError(
            f"every image needs at least one annotation; {int(empty.sum())} "
            f"image(s) have none, first at index {int(np.argmax(empty))}. "
            f"Drop them before fitting"
        )
    identified = bool(np.any((nb > 0) & (nu > 0)) or np.any(pr & (nb > 0)))
    data, inverse = compress(rho, c, u, pr)
    return _Prepared(data, inverse, c, u, rho, pr, identified)


def _shard_rows(data: SPAData, devices) -> SPAData:
    """Spread the rows over ``devices`` (data parallel); pad with zero-weight rows so that
    every device holds as many. The entry table is replicated."""
    devices = tuple(devices)
    if len(devices) == 1:
        return data
    rows = data.num_rows
    pad = (-rows) % len(devices)
    if pad:
        fill = jnp.zeros(pad, jnp.int32)
        data = data.take(jnp.concatenate([jnp.arange(rows, dtype=jnp.int32), fill]))
        data = data._replace(weight=data.weight.at[rows:].set(0.0))
    mesh = Mesh(np.array(devices), ("rows",))
    by_row = NamedSharding(mesh, PartitionSpec("rows"))
    replicated = NamedSharding(mesh, PartitionSpec())
    fields = [jax.device_put(x, by_row) for x in data[:-1]]
    table = jax.tree.map(lambda x: jax.device_put(x, replicated), data.table)
    return SPAData(*fields, table)


def _warn_unidentified() -> None:
    warnings.warn(
        "delta is not identified by these data: no image has both unbiased and biased "
        "annotations, and no probe images are marked. From biased counts alone delta trades "
        "off against the prior on p[proposal], so cleverjax reports delta's prior (a wide "
        "interval) and averages the labels over it. Add calibration images (unbiased "
        "annotations) or probes to learn delta.",
        IdentifiabilityWarning,
        stacklevel=3,
    )


def _check_beta_prior(name: str, prior) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in prior)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`{name}` must be a pair (a, b) of Beta parameters; got {prior!r}"
        ) from err
    if not (a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"`{name}` must be two positive finite numbers; got {prior!r}")
    return a, b


def _initial_prior(p: _Prepared, config: ModelConfig) -> Prior:
    """Data-driven start: each row's mean label, smoothed; Dirichlet components spread in
    sharpness; spikes at the share of rows that look certain."""
    k = p.counts.shape[1]
    soft = (p.counts + p.unbiased + 0.5) / (p.counts + p.unbiased + 0.5).sum(1, keepdims=True)
    groups = np.where(p.probe, k, p.proposals)
    means = np.tile(soft.mean(axis=0), (k + 1, 1))
    for g in range(k + 1):
        if (groups == g).any():
            means[g] = soft[groups == g].mean(axis=0)
    kinds = np.asarray(component_kinds(config))
    c = len(kinds)
    dtype = jnp.result_type(float)
    mean = np.repeat(means[:, None, :], c, axis=1)
    dirichlet = kinds == 0
    conc = np.full(c, 3.0)
    conc[dirichlet] = np.geomspace(1.0, 20.0, dirichlet.sum()) if dirichlet.sum() > 1 else 3.0
    weights = np.where(dirichlet, 0.6 / dirichlet.sum(), 0.2)
    weights = weights / weights.sum()
    return Prior(
        jnp.asarray(mean, dtype),
        jnp.asarray(np.tile(conc, (k + 1, 1)), dtype),
        jnp.asarray(np.tile(weights, (k + 1, 1)), dtype),
        component_kinds(config),
    )


# ----------------------------------------------------------------------------------
# SVI
# ----------------------------------------------------------------------------------


def _lenient_promotion():
    """NumPyro and optax internals rely on NumPy's implicit rank and dtype promotion; run
    them under JAX's standard rules even when a caller (e.g. a strict test suite) has
    asked for stricter ones."""
    stack = contextlib.ExitStack()
    stack.enter_context(jax.numpy_dtype_promotion("standard"))
    stack.enter_context(jax.numpy_rank_promotion("allow"))
    return stack


def _run_svi(
    key,
    data,
    config: ModelConfig,
    init: Prior,
    *,
    learning_rate: float,
    decay_steps: int,
    max_steps: int,
    check_every: int,
    tolerance: float,
    progress: bool,
    annotators=None,
    num_particles: int = 8,
):
    """Fit by SVI with Adam and an exponential learning-rate decay, in compiled chunks of
    ``check_every`` steps, until the ELBO plateaus. The global-only model uses the
    deterministic quadrature ELBO; the per-annotator model, with a latent per annotator,
    uses a mean-field normal guide and a Monte Carlo ELBO."""
    if annotators is None:
        guide, loss = global_guide, QuadratureELBO()
    else:
        guide = AutoNormal(
            spa_model, init_loc_fn=init_to_value(values={"delta_fraction": 0.2}), init_scale=0.05
        )
        loss = Trace_ELBO(num_particles=num_particles)
    schedule = optax.exponential_decay(
        learning_rate, transition_steps=decay_steps, decay_rate=0.5, end_value=learning_rate / 200
    )
    svi = SVI(spa_model, guide, optax.adam(schedule), loss, config=config)
    # Traced once as a whole: run eagerly, every small operation would compile on its own.
    # Data are arguments, never constants baked into the program (they may be sharded).
    with _lenient_promotion():
        state = jax.jit(lambda k, d, i, a: svi.init(k, d, init=i, annotators=a))(
            key, data, init, annotators
        )

    @jax.jit
    def run_chunk(state, data, init, annotators):
        def body(st, _):
            return svi.update(st, data, init=init, annotators=annotators)

        return jax.lax.scan(body, state, None, length=check_every)

    losses = []
    converged = False
    scale = float(jnp.sum(data.weight))  # the tolerance is per image
    bar = tqdm(total=max_steps, desc="SVI", disable=not progress, leave=False)
    steps = 0
    chunk_seconds = []
    while steps < max_steps:
        t0 = time.perf_counter()
        with _lenient_promotion():
            state, chunk = run_chunk(state, data, init, annotators)
        chunk = np.asarray(chunk)  # waits for the chunk
        chunk_seconds.append(time.perf_counter() - t0)
        steps += check_every
        bar.update(check_every)
        if not np.all(np.isfinite(chunk)):
            bad = steps - check_every + int(np.argmax(~np.isfinite(chunk)))
            bar.close()
            raise FloatingPointError(
                f"SVI diverged: the loss became {chunk[~np.isfinite(chunk)][0]} at step {bad}. "
                f"Lower `learning_rate` (now {learning_rate}) or check the data"
            )
        losses.append(chunk)
        if len(losses) >= 3 and _plateau(losses[-2], losses[-1], tolerance * scale):
            converged = True
            break
    bar.close()
    if not converged:
        warnings.warn(
            f"SVI reached max_steps={max_steps} before the ELBO plateaued; raise `max_steps` "
            f"or `learning_rate`",
            ConvergenceWarning,
            stacklevel=3,
        )
    # The first chunk compiles; the others time the steps alone.
    timed = chunk_seconds[1:] or chunk_seconds
    step_seconds = sum(timed) / (len(timed) * check_every)
    return svi.get_params(state), np.concatenate(losses), converged, step_seconds


def _plateau(previous: np.ndarray, last: np.ndarray, tolerance: float) -> bool:
    """ELBO plateau: the mean loss of the last window improved on the window before by
    less than ``tolerance`` nats, or by less than twice the standard error of that
    difference (the noise level estimated from successive differences, which ignores a
    smooth trend)."""
    gain = previous.mean() - last.mean()
    noise_var = 0.5 * np.var(np.diff(np.concatenate([previous, last])))
    se = math.sqrt(2 * noise_var / len(last))
    return bool(gain < max(2 * se, tolerance))


# ----------------------------------------------------------------------------------
# Posterior summaries for given draws of the global parameters
# ----------------------------------------------------------------------------------


def _log_w(data: SPAData, delta, one_star, num_terms: int, annotators, worker_delta):
    """log W_s per entry of ``data.table`` (per row with annotators)."""
    if annotators is None:
        return data.table.log_weights(delta, one_star, num_terms)
    return log_weights_annotators(
        annotators.worker, annotators.accepted, worker_delta, one_star, num_terms
    )


def _sample_t(key, data: SPAData, prior: Prior, terms, num_draws: int, dtype):
    """Exact draws of (component, t = p[rho]) from each row's posterior."""
    k_z, k_s, k_ta, k_tb = jax.random.split(key, 4)
    rows = data.num_rows
    z = jax.random.categorical(k_z, terms.log_marginal, axis=-1, shape=(num_draws, rows))
    entry = data.entry[None, :]
    log_mix = terms.log_mix[entry, z]  # (draws, rows, terms)
    s = jax.random.categorical(
        k_s, jnp.where(jnp.isfinite(log_mix), log_mix, -1e30), axis=-1
    ).astype(dtype)
    table = data.table
    u = table.u[entry].astype(dtype)
    rest = (table.m + table.n - table.u)[entry].astype(dtype)
    a = terms.a_t[entry, z] + u + s
    b = terms.b_t[entry, z] + rest - s
    # Gamma draws in log space: tiny concentrations underflow a plain gamma draw to 0.
    log_ga = jax.random.loggamma(k_ta, a, dtype=dtype)
    log_gb = jax.random.loggamma(k_tb, b, dtype=dtype)
    t = jnp.exp(log_ga - jnp.logaddexp(log_ga, log_gb))
    kind = jnp.asarray(prior.kind)[z]
    return z, jnp.where(kind == 1, 0.0, jnp.where(kind == 2, 1.0, t))


def _sample_p(key, data: SPAData, prior: Prior, log_w, num_draws: int):
    """Exact draws of p from the posterior of each row given the global parameters:
    a component, then a Beta term of t, then t, then r from its Dirichlet."""
    terms = component_terms(data, prior, log_w)
    dtype = log_w.dtype
    k_t, k_r = jax.random.split(key)
    z, t = _sample_t(k_t, data, prior, terms, num_draws, dtype)
    num_classes = data.counts.shape[1]
    is_rho = data.proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
    a_rest = terms.a_rest[jnp.arange(data.num_rows)[None, :], z]  # (draws, rows, K)
    log_g = jax.random.loggamma(k_r, jnp.where(is_rho[None], 1.0, a_rest), dtype=dtype)
    r = jax.nn.softmax(jnp.where(is_rho[None], -jnp.inf, log_g), axis=-1)
    return (1 - t)[..., None] * r + t[..., None] * is_rho[None].astype(dtype)


def _global_draws(key, params, num_draws: int, config: ModelConfig):
    """Draws of (delta, 1*) from the fitted :func:`global_guide`."""
    draws = {}
    for i, (site, _) in enumerate(_global_sites(config)):
        eps = jax.random.normal(jax.random.fold_in(key, i), (num_draws,), jnp.result_type(float))
        draws[site] = jax.nn.sigmoid(params[f"{site}_loc"] + params[f"{site}_scale"] * eps)
    if config.one_star is None:
        one_star = draws["one_star"]
    else:
        one_star = jnp.full_like(draws["delta_fraction"], config.one_star)
    return one_star * draws["delta_fraction"], one_star


@functools.partial(jax.jit, static_argnames=("num_terms", "level", "num_interval_draws"))
def _summaries(
    key,
    data: SPAData,
    prior: Prior,
    deltas,
    stars,
    workers,
    num_terms: int,
    annotators,
    level: float,
    num_interval_draws: int,
):
    """Posterior mean of p (averaged over draws of the globals) and credible intervals."""

    def mean_for(i):
        w = None if workers is None else workers[i]
        return posterior_moments(
            data, prior, _log_w(data, deltas[i], stars[i], num_terms, annotators, w)
        )

    means = jax.lax.map(mean_for, jnp.arange(deltas.shape[0]))
    mean = jnp.mean(means, axis=0)

    def draws_for(args):
        i, k = args
        w = None if workers is None else workers[i]
        log_w = _log_w(data, deltas[i], stars[i], num_terms, annotators, w)
        return _sample_p(k, data, prior, log_w, 1)[0]

    keys = jax.random.split(key, num_interval_draws)
    which = jnp.arange(num_interval_draws) % deltas.shape[0]
    samples = jax.lax.map(draws_for, (which, keys))  # (draws, rows, K)
    tail = (1 - level) / 2
    lower, upper = jnp.quantile(samples, jnp.array([tail, 1 - tail]), axis=0)
    return mean, lower, upper


def _ppc(
    key, prep: _Prepared, prior: Prior, deltas, stars, num_terms: int, num_replicates: int
) -> PosteriorPredictive:
    """Replicate the count on the proposal from posterior draws with the SPA engine."""
    k = prep.counts.shape[1]
    num = prep.counts.sum(axis=1)
    rows = jnp.asarray(prep.inverse)
    per_class = np.bincount(prep.proposals, weights=num, minlength=k)

    def rates(c_rho):
        by_class = np.bincount(prep.proposals, weights=c_rho, minlength=k)
        with np.errstate(invalid="ignore", divide="ignore"):
            by_class = np.where(per_class > 0, by_class / per_class, np.nan)
        return float(c_rho.sum() / max(num.sum(), 1)), by_class

    obs, obs_cls = rates(prep.counts[np.arange(len(num)), prep.proposals])
    rep, rep_cls = [], []
    for r, k_r in enumerate(jax.random.split(key, num_replicates)):
        i = r % deltas.shape[0]
        c_rho = _ppc_replicate(
            k_r, prep.data, prior, deltas[i], stars[i], rows, jnp.asarray(num), num_terms=num_terms
        )
        a, c = rates(np.asarray(c_rho, np.float64))
        rep.append(a)
        rep_cls.append(c)
    rep_arr = np.asarray(rep)
    p_value = float(min(1.0, 2 * min(np.mean(rep_arr >= obs), np.mean(rep_arr <= obs))))
    return PosteriorPredictive(
        obs, jnp.asarray(rep_arr), p_value, jnp.asarray(obs_cls), jnp.asarray(np.stack(rep_cls))
    )


@functools.partial(jax.jit, static_argnames=("num_terms",))
def _ppc_replicate(key, data: SPAData, prior: Prior, delta, star, rows, num, *, num_terms):
    """One replicated count on the proposal per image: an independent posterior draw of
    t = p[rho] for every image, then the SPA engine on the two-class distribution
    (t, 1 - t) with the proposal on the first class, which draws exactly
    Binomial(N, delta + (1* - delta) t)."""
    k_t, k_sim = jax.random.split(key)
    log_w = _log_w(data, delta, star, num_terms, None, None)
    image_data = data.take(rows)
    terms = component_terms(image_data, prior, log_w)
    _, t = _sample_t(k_t, image_data, prior, terms, 1, log_w.dtype)
    two_class = jnp.stack([t[0], 1 - t[0]], axis=1)
    counts = simulate_counts(
        k_sim, two_class, jnp.zeros_like(rows), num_annotations=num, delta=delta, one_star=star
    )
    return counts[:, 0]


# ----------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------


def fit(
    key: PRNGKeyArray,
    counts: ArrayIn,
    proposals: ArrayIn,
    *,
    unbiased_counts: ArrayIn | None = None,
    probe: ArrayIn | None = None,
    one_star: float | None = 0.99,
    delta_prior: tuple[float, float] = (1.0, 1.0),
    num_components: int = 2,
    spikes: bool = True,
    method: Literal["svi", "nuts"] = "svi",
    learning_rate: float = 0.2,
    decay_steps: int = 300,
    max_steps: int = 20000,
    check_every: int = 250,
    tolerance: float = 1e-4,
    subsample_size: int | None = None,
    level: float = 0.9,
    delta_from: Literal["calibration", "all"] = "calibration",
    num_draws: int = 16,
    num_interval_draws: int = 200,
    num_ppc_replicates: int = 50,
    num_samples: int = 1000,
    devices: Sequence[jax.Device] | None = None,
    progress: bool = False,
) -> FitResult:
    """Infer delta, 1* and every image's label distribution from proposal-biased counts.

    The model (see :func:`cleverjax.spa_model`) puts a class-conditional Dirichlet-mixture
    prior on each image's label distribution, learned from all images (empirical Bayes),
    and integrates every distribution out exactly; SVI (optax Adam with an exponential
    decay) then fits the global parameters. The repaired labels are exact posterior means
    given the globals, averaged over the posterior of delta. BC is this model's likelihood
    inversion at a point estimate; CB its posterior mean under a prior centred on the
    class-blending matrix.

    Args:
        key: PRNG key.
        counts: ``(images, classes)`` counts of annotations made with the proposal.
        proposals: ``(images,)`` proposed classes.
        unbiased_counts: keyword-only; ``(images, classes)`` counts of annotations made
            without a proposal (zero rows where there are none): calibration data.
        probe: keyword-only; ``(images,)`` bool, the image's proposal was drawn uniformly
            at random (a probe), which identifies delta without unbiased annotations.
        one_star: keyword-only; fixed 1* (paper: 0.99), or ``None`` to learn it.
        delta_prior: keyword-only; Beta(a, b) prior of ``delta / 1*``.
        num_components: keyword-only; Dirichlet components per prior row.
        spikes: keyword-only; add components with ``p[proposal]`` exactly 0 and exactly 1
            (classes nobody chose, unanimous images).
        method: keyword-only; ``"svi"``, or ``"nuts"`` (SVI for the prior, then NUTS on
            the global parameters; for small problems).
        learning_rate: keyword-only; Adam's initial learning rate.
        decay_steps: keyword-only; the learning rate halves every ``decay_steps`` steps
            (down to ``learning_rate / 200``).
        max_steps: keyword-only; SVI step limit.
        check_every: keyword-only; steps between convergence checks.
        tolerance: keyword-only; convergence: the mean loss of the last ``check_every``
            steps improved on the window before by less than this many nats per image (or
            by less than twice its noise).
        subsample_size: keyword-only; distinct rows per SVI step (default: all; identical
            images are merged first, so this is rarely needed).
        level: keyword-only; credible level of the intervals.
        delta_from: keyword-only; which images inform delta and 1*. ``"all"``: every
            image, through the learned prior (sharper; as right as the prior family).
            ``"calibration"``: only calibration images (unbiased annotations) and probes,
            a cut posterior that no misspecification of the prior can make confidently
            wrong (wider). Without calibration images or probes delta is not identified:
            either way :func:`fit` warns and reports delta's prior.
        num_draws: keyword-only; draws of the globals the posterior mean averages over.
        num_interval_draws: keyword-only; posterior draws per image for the intervals.
        num_ppc_replicates: keyword-only; replicated data sets for the predictive check
            (0 to skip).
        num_samples: keyword-only; NUTS samples (and warm-up) with ``method="nuts"``.
        devices: keyword-only; devices to spread the images over, data parallel (default:
            all local devices).
        progress: keyword-only; show progress bars.

    Returns:
        A :class:`FitResult`.

    Raises:
        ValueError: on mismatched shapes, negative or non-integer counts, images without
            any annotation, or priors outside their support.
        FloatingPointError: if SVI diverges (a NaN or infinite loss).

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=1000)
        >>> rho = cj.propose(jax.random.key(1), p, accuracy=0.9)
        >>> biased = cj.simulate_counts(jax.random.key(2), p, rho, num_annotations=10, delta=0.3)
        >>> cal = cj.calibration_sample(jax.random.key(3), p)
        >>> unbiased = jax.numpy.zeros_like(biased).at[cal.indices].set(cal.counts)
        >>> res = cj.fit(jax.random.key(4), biased, rho, unbiased_counts=unbiased,
        ...              num_ppc_replicates=0)
        >>> res.posterior_mean.shape, res.delta_interval[0] < res.delta < res.delta_interval[1]
        ((1000, 3), True)
    """
    start = time.perf_counter()
    kd = jax.random.wrap_key_data(key_data(key))
    prep = _prepare(counts, proposals, unbiased_counts, probe)
    a, b = _check_beta_prior("delta_prior", delta_prior)
    _checks.check_choice("method", method, ("svi", "nuts"))
    _checks.check_choice("delta_from", delta_from, ("calibration", "all"))
    if one_star is not None and not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1] or be None (learned); got {one_star}")
    if not isinstance(num_components, (int, np.integer)) or num_components < 1:
        raise ValueError(f"`num_components` must be a positive int; got {num_components!r}")
    if not 0 < level < 1:
        raise ValueError(f"`level` must lie in (0, 1); got {level}")
    for name, v in (
        ("max_steps", max_steps),
        ("check_every", check_every),
        ("decay_steps", decay_steps),
        ("num_draws", num_draws),
        ("num_interval_draws", num_interval_draws),
    ):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"`{name}` must be a positive int; got {v!r}")
    num_terms = int(prep.counts.sum(axis=1).max()) + 1
    config = ModelConfig(
        num_classes=prep.counts.shape[1],
        num_components=int(num_components),
        num_terms=num_terms,
        delta_prior=(a, b),
        one_star=one_star,
        subsample_size=subsample_size,
        delta_from=delta_from,
        spikes=bool(spikes),
    )
    if not prep.identified:
        _warn_unidentified()
    k_svi, k_draw, k_int, k_ppc, k_mcmc = jax.random.split(kd, 5)
    init = _initial_prior(prep, config)
    devs = tuple(jax.local_devices()) if devices is None else tuple(devices)
    if not devs:
        raise ValueError("`devices` must name at least one device; got an empty sequence")
    prep = prep._replace(data=_shard_rows(prep.data, devs))
    params, losses, converged, step_seconds = _run_svi(
        k_svi,
        prep.data,
        config,
        init,
        learning_rate=learning_rate,
        decay_steps=int(decay_steps),
        max_steps=int(max_steps),
        check_every=int(check_every),
        tolerance=float(tolerance),
        progress=progress,
    )
    prior = prior_from_params(params, config)
    dtype = jnp.result_type(float)

    if not prep.identified:
        # The data say nothing about delta: report its prior (and average over it).
        all_deltas = jax.random.beta(k_draw, a, b, (4000,), dtype=dtype)
        if one_star is not None:
            all_deltas = all_deltas * one_star
        all_stars = jnp.full_like(all_deltas, one_star if one_star is not None else 0.99)
    elif method == "nuts":
        nuts_model = numpyro.handlers.substitute(
            spa_model, data={k: v for k, v in params.items() if k.startswith("prior_")}
        )
        mcmc = MCMC(
            NUTS(nuts_model),
            num_warmup=int(num_samples),
            num_samples=int(num_samples),
            progress_bar=progress,
        )
        with _lenient_promotion():
            mcmc.run(k_mcmc, prep.data, config=config._replace(subsample_size=None), init=init)
        samples = mcmc.get_samples()
        all_stars = (
            samples["one_star"]
            if one_star is None
            else jnp.full_like(samples["delta_fraction"], one_star)
        )
        all_deltas = all_stars * samples["delta_fraction"]
    else:
        all_deltas, all_stars = _global_draws(k_draw, params, 4000, config)

    # A few stratified draws of the globals for the posterior mean and intervals.
    order = jnp.argsort(all_deltas)
    quantiles = (np.arange(num_draws) + 0.5) / num_draws
    pick = order[(quantiles * all_deltas.shape[0]).astype(np.int32)]
    deltas, stars = all_deltas[pick], all_stars[pick]
    mean, lower, upper = _summaries(
        k_int,
        prep.data,
        prior,
        deltas,
        stars,
        None,
        num_terms=num_terms,
        annotators=None,
        level=float(level),
        num_interval_draws=int(num_interval_draws),
    )
    rows = jnp.asarray(prep.inverse)
    ppc = None
    if num_ppc_replicates:
        ppc = _ppc(k_ppc, prep, prior, deltas, stars, num_terms, int(num_ppc_replicates))
    tail = (1 - level) / 2
    d_lo, d_hi = (float(v) for v in jnp.quantile(all_deltas, jnp.array([tail, 1 - tail])))
    s_lo, s_hi = (float(v) for v in jnp.quantile(all_stars, jnp.array([tail, 1 - tail])))
    return FitResult(
        delta=float(jnp.mean(all_deltas)),
        delta_interval=(d_lo, d_hi),
        one_star=float(jnp.mean(all_stars)),
        one_star_interval=(s_lo, s_hi),
        posterior_mean=mean[rows],
        lower=lower[rows],
        upper=upper[rows],
        level=float(level),
        losses=jnp.asarray(losses),
        converged=converged,
        identified=prep.identified,
        delta_samples=all_deltas,
        prior=prior,
        params=dict(params),
        ppc=ppc,
        method=method,
        seconds=time.perf_counter() - start,
        step_seconds=step_seconds,
    )


class DeltaPosterior(NamedTuple):
    """The exact posterior of delta on a grid (the collapsed path).

    Attributes:
        grid: ``(points,)`` values of delta.
        weights: ``(points,)`` posterior probability of each grid cell (sums to 1).
        mean: posterior mean.
        interval: equal-tailed credible interval at ``level``.
        log_evidence: log marginal likelihood of the data given the prior (up to the
            grid's quadrature error).
    """

    grid: Float[Array, " points"]
    weights: Float[Array, " points"]
    mean: float
    interval: tuple[float, float]
    log_evidence: float


def exact_delta_posterior(
    counts: ArrayIn,
    proposals: ArrayIn,
    *,
    prior: Prior,
    unbiased_counts: ArrayIn | None = None,
    probe: ArrayIn | None = None,
    one_star: float = 0.99,
    delta_prior: tuple[float, float] = (1.0, 1.0),
    level: float = 0.9,
    num_points: int = 256,
    delta_from: Literal["calibration", "all"] = "calibration",
) -> DeltaPosterior:
    """Posterior of delta by exact integration: every label distribution is integrated
    out in closed form, and delta by quadrature on a grid refined around its mass.

    With the prior fixed (e.g. ``fit(...).prior``), this is the reference that SVI's
    posterior of delta is checked against.

    Args:
        counts: ``(images, classes)`` biased counts.
        proposals: ``(images,)`` proposed classes.
        prior: keyword-only; the label-distribution prior, e.g. from :func:`fit`.
        unbiased_counts: keyword-only; calibration counts (see :func:`fit`).
        probe: keyword-only; probe images (see :func:`fit`).
        one_star: keyword-only; 1*, fixed.
        delta_prior: keyword-only; Beta prior of delta, as its ``delta / one_star``.
        level: keyword-only; credible level.
        num_points: keyword-only; grid points per refinement stage.
        delta_from: keyword-only; ``"calibration"`` (only calibration and probe images
            inform delta, as in :func:`fit`) or ``"all"``.

    Returns:
        A :class:`DeltaPosterior`.
    """
    prep = _prepare(counts, proposals, unbiased_counts, probe)
    a, b = _check_beta_prior("delta_prior", delta_prior)
    if not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1]; got {one_star}")
    _checks.check_choice("delta_from", delta_from, ("calibration", "all"))
    num_terms = int(prep.counts.sum(axis=1).max()) + 1
    dtype = jnp.result_type(float)
    data = prep.data
    if delta_from == "calibration":
        keep = np.asarray(calibrated(data))
        if not keep.any():
            raise ValueError("no calibration images or probes: delta's posterior is its prior")
        data = data.take(np.flatnonzero(keep))
    star = jnp.asarray(one_star, dtype)

    @jax.jit
    def log_post(grid):
        def one(d):
            log_w = _log_w(data, d, star, num_terms, None, None)
            return jnp.sum(data.weight * log_likelihood(data, prior, log_w))

        ll = jax.lax.map(one, grid)
        return ll + jax.scipy.stats.beta.logpdf(grid / star, a, b) - jnp.log(star)

    def stage(lo, hi):
        nodes, w = np.polynomial.legendre.leggauss(num_points)
        grid = jnp.asarray(lo + (hi - lo) * (nodes + 1) / 2, dtype)
        lw = jnp.asarray(np.log(w * (hi - lo) / 2), dtype)
        return grid, log_post(grid) + lw

    grid, lp = stage(0.0, float(one_star))
    wts = np.asarray(jax.nn.softmax(lp))
    g = np.asarray(grid)
    cdf = np.cumsum(wts)
    lo = g[max(int(np.searchsorted(cdf, 1e-9)) - 2, 0)]
    hi = g[min(int(np.searchsorted(cdf, 1 - 1e-9)) + 2, len(g) - 1)]
    grid, lp = stage(float(lo), float(hi))
    log_evidence = float(jax.scipy.special.logsumexp(lp))
    wts = jax.nn.softmax(lp)
    mean = float(jnp.sum(wts * grid))
    cdf = np.cumsum(np.asarray(wts))
    tail = (1 - level) / 2
    g = np.asarray(grid)
    interval = (float(np.interp(tail, cdf, g)), float(np.interp(1 - tail, cdf, g)))
    return DeltaPosterior(grid, wts, mean, interval, log_evidence)


class CalibrationPlan(NamedTuple):
    """Result of :func:`plan_calibration`.

    Attributes:
        table: one row per calibration size: ``calibration_images``, the median and 90th
            percentile of the credible interval's half-width over replicates,
            ``rmse`` of the posterior mean, and ``coverage`` (share of intervals that
            contain the true delta).
        recommended: the smallest size whose 90th-percentile half-width is at most
            ``target``, or ``None`` if no size reaches it.
        target: the half-width asked for.
    """

    table: pd.DataFrame
    recommended: int | None
    target: float


def plan_calibration(
    key: PRNGKeyArray,
    p: ArrayIn,
    *,
    delta: float,
    target: float,
    sizes: Sequence[int] = (25, 50, 100, 200, 400),
    num_annotations: int = 10,
    calibration_annotations: int = 10,
    accuracy: float = 0.9,
    one_star: float = 0.99,
    replicates: int = 10,
    level: float = 0.9,
    prior: Prior | None = None,
) -> CalibrationPlan:
    """How many calibration images pin delta down to +-``target``? Answered by simulation.

    For each candidate size and replicate, the SPA engine simulates a campaign on the
    ground truth ``p`` (proposals of the given accuracy, ``num_annotations`` biased
    annotations per image) and a calibration set (``calibration_annotations`` unbiased
    annotations on that many random images). The credible interval of delta comes from
    the calibration images alone (:func:`exact_delta_posterior` with
    ``delta_from="calibration"``: what the calibration data guarantee without trusting
    the prior family), under a prior fitted once on a pilot simulation (or ``prior``).

    Args:
        key: PRNG key.
        p: ``(images, classes)`` ground truth, e.g. a preset or a pilot data set.
        delta: keyword-only; the delta to plan for.
        target: keyword-only; wanted half-width of the credible interval.
        sizes: keyword-only; candidate numbers of calibration images.
        num_annotations: keyword-only; biased annotations per image.
        calibration_annotations: keyword-only; unbiased annotations per calibration image.
        accuracy: keyword-only; proposer accuracy.
        one_star: keyword-only; 1*.
        replicates: keyword-only; simulated campaigns per size.
        level: keyword-only; credible level.
        prior: keyword-only; the label prior; by default fitted on a pilot simulation.

    Returns:
        A :class:`CalibrationPlan`.

    Examples:
        >>> import jax, cleverjax as cj
        >>> p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=2000)
        >>> plan = cj.plan_calibration(jax.random.key(1), p, delta=0.2, target=0.05,
        ...                            sizes=(50, 200), replicates=1)
        >>> list(plan.table.columns)[:2]
        ['calibration_images', 'median_half_width']
    """
    p_arr = _checks.check_simplex_rows("p", _checks.as_float_array("p", p, ndim=2))
    n = p_arr.shape[0]
    if not target > 0:
        raise ValueError(f"`target` must be > 0; got {target}")
    sizes = sorted(int(m) for m in sizes)
    if not sizes or sizes[0] < 3 or sizes[-1] > n:
        raise ValueError(f"`sizes` must be ints in [3, {n}] (the number of images); got {sizes}")
    if not isinstance(replicates, (int, np.integer)) or replicates < 1:
        raise ValueError(f"`replicates` must be a positive int; got {replicates!r}")
    kd = jax.random.wrap_key_data(key_data(key))
    k_pilot, k_runs = jax.random.split(kd)

    def campaign(k, size):
        k_prop, k_sim, k_cal = jax.random.split(k, 3)
        rho = propose(k_prop, p_arr, accuracy=accuracy)
        biased = simulate_counts(
            k_sim, p_arr, rho, num_annotations=num_annotations, delta=delta, one_star=one_star
        )
        cal = calibration_sample(
            k_cal, p_arr, num_images=size, num_annotations=calibration_annotations
        )
        unbiased = jnp.zeros_like(biased).at[cal.indices].set(cal.counts)
        return biased, rho, unbiased

    if prior is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            b, r, u = campaign(k_pilot, sizes[-1])
            prior = fit(
                k_pilot,
                b,
                r,
                unbiased_counts=u,
                one_star=one_star,
                num_ppc_replicates=0,
                num_interval_draws=2,
                max_steps=3000,
            ).prior
    rows = []
    for i, size in enumerate(sizes):
        widths, errors, covered = [], [], []
        for j in range(int(replicates)):
            b, r, u = campaign(jax.random.fold_in(k_runs, i * 100003 + j), size)
            post = exact_delta_posterior(
                b,
                r,
                unbiased_counts=u,
                prior=prior,
                one_star=one_star,
                level=level,
                delta_from="calibration",
            )
            lo, hi = post.interval
            widths.append((hi - lo) / 2)
            errors.append(post.mean - delta)
            covered.append(lo <= delta <= hi)
        rows.append(
            dict(
                calibration_images=size,
                median_half_width=float(np.median(widths)),
                q90_half_width=float(np.quantile(widths, 0.9)),
                rmse=float(np.sqrt(np.mean(np.square(errors)))),
                coverage=float(np.mean(covered)),
            )
        )
    table = pd.DataFrame(rows)
    ok = table[table["q90_half_width"] <= target]
    recommended = int(ok["calibration_images"].iloc[0]) if len(ok) else None
    return CalibrationPlan(table, recommended, float(target))


class AnnotatorFit(NamedTuple):
    """Result of :func:`fit_annotators`: a population delta and one per annotator.

    Attributes:
        delta: posterior mean of the population delta (the median annotator's).
        delta_interval: its credible interval.
        annotator_delta: ``(annotators,)`` posterior means of each annotator's delta.
        annotator_interval: ``(annotators, 2)`` their credible intervals.
        spread: posterior mean of the spread of annotators' deltas (logit scale).
        workers: annotator names, in the order of ``annotator_delta``.
        tasks: task names, in the order of ``posterior_mean``.
        classes: class names.
        posterior_mean: ``(tasks, classes)`` repaired label distributions.
        lower: ``(tasks, classes)`` lower ends of the per-task credible intervals.
        upper: ``(tasks, classes)`` upper ends.
        level: credible level.
        losses: ``(steps,)`` negative ELBO per SVI step.
        converged: whether the ELBO plateaued before ``max_steps``.
        identified: whether calibration data identify delta.
        prior: the learned label prior.
        params: all fitted parameters.
        seconds: wall time.
    """

    delta: float
    delta_interval: tuple[float, float]
    annotator_delta: Float[Array, " annotators"]
    annotator_interval: Float[Array, "annotators 2"]
    spread: float
    workers: tuple[str, ...]
    tasks: tuple[str, ...]
    classes: tuple[str, ...]
    posterior_mean: Float[Array, "tasks classes"]
    lower: Float[Array, "tasks classes"]
    upper: Float[Array, "tasks classes"]
    level: float
    losses: Float[Array, " steps"]
    converged: bool
    identified: bool
    prior: Prior
    params: dict
    seconds: float


def _auto_normal_draws(key, params, num_draws: int, transforms: dict) -> dict:
    """Draws from a fitted AutoNormal guide, from its parameters (loc and scale on the
    unconstrained scale of every site) and each site's transform to its support."""
    out = {}
    for i, (site, to_support) in enumerate(transforms.items()):
        loc = params[f"{site}_auto_loc"]
        scale = params[f"{site}_auto_scale"]
        eps = jax.random.normal(
            jax.random.fold_in(key, i), (num_draws, *jnp.shape(loc)), jnp.result_type(float)
        )
        out[site] = to_support(loc[None] + scale[None] * eps)
    return out


def _annotator_arrays(table) -> tuple[np.ndarray, np.ndarray]:
    """Per task, the annotator and acceptance of each biased annotation, padded with -1."""
    biased = table.proposal >= 0
    task = table.task[biased]
    order = np.argsort(task, kind="stable")
    task = task[order]
    worker = table.worker[biased][order]
    accepted = (table.label[biased] == table.proposal[biased])[order]
    num_tasks = len(table.tasks)
    per_task = np.bincount(task, minlength=num_tasks)
    start = np.concatenate([[0], np.cumsum(per_task)[:-1]])
    slot = np.arange(len(task)) - start[task]
    width = max(int(per_task.max(initial=0)), 1)
    workers = np.full((num_tasks, width), -1, np.int32)
    acc = np.zeros((num_tasks, width), bool)
    workers[task, slot] = worker
    acc[task, slot] = accepted
    return workers, acc


def fit_annotators(
    key: PRNGKeyArray,
    table,
    *,
    one_star: float = 0.99,
    delta_prior: tuple[float, float] = (1.0, 1.0),
    num_components: int = 2,
    spikes: bool = True,
    learning_rate: float = 0.05,
    decay_steps: int = 1000,
    max_steps: int = 20000,
    check_every: int = 250,
    tolerance: float = 1e-4,
    num_particles: int = 8,
    level: float = 0.9,
    num_draws: int = 16,
    num_interval_draws: int = 100,
    progress: bool = False,
) -> AnnotatorFit:
    """Fit the SPA model with one delta per annotator, from per-annotation data.

    Annotator ``w`` accepts a proposal with probability ``delta_w + (1* - delta_w) p[rho]``,
    with ``delta_w = 1* sigmoid(logit(delta / 1*) + spread * z_w)`` and
    ``z_w ~ Normal(0, 1)``: a hierarchical population around ``delta``. The likelihood of
    each task is still exact (a product of linear factors in ``p[rho]``, expanded by
    dynamic programming); SVI uses a mean-field normal guide and a Monte Carlo ELBO.

    Args:
        key: PRNG key.
        table: an :class:`AnnotationTable` (from :func:`read_annotations`); rows with a
            proposal are biased annotations, rows without are unbiased (calibration).
        one_star: keyword-only; 1* (fixed).
        delta_prior: keyword-only; Beta prior of the population ``delta / 1*``.
        num_components: keyword-only; Dirichlet components per prior row.
        spikes: keyword-only; add the spike components (see :func:`fit`).
        learning_rate: keyword-only; Adam's initial learning rate.
        decay_steps: keyword-only; the learning rate halves every ``decay_steps`` steps.
        max_steps: keyword-only; SVI step limit.
        check_every: keyword-only; steps between convergence checks.
        tolerance: keyword-only; plateau tolerance in nats per task and window.
        num_particles: keyword-only; ELBO particles per step.
        level: keyword-only; credible level.
        num_draws: keyword-only; posterior draws for the repaired labels.
        num_interval_draws: keyword-only; posterior draws per task for the intervals.
        progress: keyword-only; show a progress bar.

    Returns:
        An :class:`AnnotatorFit`.
    """
    from ._io import AnnotationTable, to_counts

    start = time.perf_counter()
    if not isinstance(table, AnnotationTable):
        raise TypeError(
            f"`table` must be an AnnotationTable (see cleverjax.read_annotations); "
            f"got {type(table).__name__}"
        )
    if table.num_annotations == 0:
        raise ValueError("`table` holds no annotations")
    a, b = _check_beta_prior("delta_prior", delta_prior)
    if not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1]; got {one_star}")
    counts = to_counts(table)
    no_proposal = counts.proposals < 0
    # Tasks never shown a proposal carry only unbiased annotations: population prior.
    proposals = np.where(no_proposal, 0, counts.proposals)
    prep = _prepare(counts.biased, proposals, counts.unbiased, no_proposal)
    workers, accepted = _annotator_arrays(table)
    n_tasks = len(proposals)
    data = SPAData(
        jnp.asarray(proposals, jnp.int32),
        jnp.asarray(counts.biased, jnp.int32),
        jnp.asarray(counts.unbiased, jnp.int32),
        jnp.asarray(no_proposal),
        jnp.ones(n_tasks, jnp.result_type(float)),
        jnp.zeros(n_tasks, jnp.int32),
        prep.data.table,
    ).own_entries()
    annotators = AnnotatorData(jnp.asarray(workers), jnp.asarray(accepted))
    num_terms = int(counts.biased.sum(axis=1).max()) + 1
    config = ModelConfig(
        num_classes=counts.biased.shape[1],
        num_components=int(num_components),
        num_terms=num_terms,
        delta_prior=(a, b),
        one_star=one_star,
        num_workers=len(table.workers),
        delta_from="all",
        spikes=bool(spikes),
    )
    if not prep.identified:
        _warn_unidentified()
    k_svi, k_draw, k_int = jax.random.split(jax.random.wrap_key_data(key_data(key)), 3)
    init = _initial_prior(prep, config)
    params, losses, converged, _ = _run_svi(
        k_svi,
        data,
        config,
        init,
        learning_rate=learning_rate,
        decay_steps=int(decay_steps),
        max_steps=int(max_steps),
        check_every=int(check_every),
        tolerance=float(tolerance),
        progress=progress,
        annotators=annotators,
        num_particles=int(num_particles),
    )
    prior = prior_from_params(params, config)
    draws = _auto_normal_draws(
        k_draw,
        params,
        2000,
        {"delta_fraction": jax.nn.sigmoid, "spread": jnp.exp, "worker_z": lambda x: x},
    )
    frac = draws["delta_fraction"]
    deltas = one_star * frac
    logit = jnp.log(frac) - jnp.log1p(-frac)
    worker_deltas = one_star * jax.nn.sigmoid(
        logit[:, None] + draws["spread"][:, None] * draws["worker_z"]
    )
    if not prep.identified:
        deltas = one_star * jax.random.beta(k_draw, a, b, (2000,))
    stars = jnp.full_like(deltas, one_star)
    pick = jnp.linspace(0, 1999, num_draws).astype(int)
    mean, lower, upper = _summaries(
        k_int,
        data,
        prior,
        deltas[pick],
        stars[pick],
        worker_deltas[pick],
        num_terms=num_terms,
        annotators=annotators,
        level=float(level),
        num_interval_draws=int(num_interval_draws),
    )
    tail = (1 - level) / 2
    q = jnp.array([tail, 1 - tail])
    return AnnotatorFit(
        delta=float(jnp.mean(deltas)),
        delta_interval=tuple(float(v) for v in jnp.quantile(deltas, q)),
        annotator_delta=jnp.mean(worker_deltas, axis=0),
        annotator_interval=jnp.quantile(worker_deltas, q, axis=0).T,
        spread=float(jnp.mean(draws["spread"])),
        workers=tuple(table.workers),
        tasks=tuple(table.tasks),
        classes=tuple(table.classes),
        posterior_mean=mean,
        lower=lower,
        upper=upper,
        level=float(level),
        losses=jnp.asarray(losses),
        converged=converged,
        identified=prep.identified,
        prior=prior,
        params=dict(params),
        seconds=time.perf_counter() - start,
    )
