"""``fit_annotators``: the SPA model with one delta per annotator, from per-annotation
data (a hierarchical population of annotators around the population delta)."""

from __future__ import annotations

import functools
import time
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_value

from .. import _checks
from .._cache import release_compiled_programs
from .._random import as_typed_key
from .data import SPAData, host_array, prepare
from .fitting import (
    _identification,
    _interval,
    _intervals,
    _prior_draws,
    _warn_identification,
    initial_prior,
)
from .likelihood import (
    AnnotatorData,
    Prior,
    entry_mean_t,
    log_weights_annotators,
    posterior_mean_given,
    row_part,
    t_part,
)
from .model import DEFAULT_DELTA_PRIOR, ModelConfig, prior_from_params, spa_model
from .optimize import default_adam, run_svi
from .posterior import equal_tailed, sample_p


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

    def to_dict(self) -> dict:
        """The scalar results as plain Python values (JSON-ready): the population delta
        and spread, every annotator's delta with its interval, convergence and timing."""
        intervals = np.asarray(self.annotator_interval, np.float64)
        return {
            "delta": self.delta,
            "delta_interval": list(self.delta_interval),
            "spread": self.spread,
            "level": self.level,
            "converged": self.converged,
            "identified": self.identified,
            "steps": int(self.losses.shape[0]),
            "seconds": self.seconds,
            "annotators": {
                w: {"delta": float(d), "interval": [float(lo), float(hi)]}
                for w, d, (lo, hi) in zip(
                    self.workers, np.asarray(self.annotator_delta, np.float64), intervals
                )
            },
        }


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


@functools.partial(jax.jit, static_argnames=("num_terms", "level", "per_delta"))
def _annotator_summaries(
    key,
    data: SPAData,
    annotators: AnnotatorData,
    prior: Prior,
    worker_deltas,
    star,
    *,
    num_terms: int,
    level: float,
    per_delta: int,
):
    """Posterior means and intervals of every task, averaged over draws of the
    annotators' deltas (each task's weights depend on who annotated it)."""
    rows = row_part(data, prior)

    def per_draw(args):
        w, k = args
        log_w = log_weights_annotators(annotators.worker, annotators.accepted, w, star, num_terms)
        t = t_part(data.table, prior, log_w)
        mean = posterior_mean_given(data, rows, t, entry_mean_t(data.table, prior, t))
        return mean, sample_p(k, data, prior, rows, t, per_delta)

    keys = jax.random.split(key, worker_deltas.shape[0])
    means, draws = jax.lax.map(per_draw, (worker_deltas, keys))
    draws = draws.reshape(-1, *draws.shape[2:])
    lower, upper = equal_tailed(draws, level, axis=0)
    return jnp.mean(means, axis=0), lower, upper


def fit_annotators(
    key: PRNGKeyArray,
    table,
    *,
    one_star: float = 0.99,
    delta_prior: tuple[float, float] = DEFAULT_DELTA_PRIOR,
    num_components: int = 2,
    spikes: bool = True,
    delta_from: Literal["calibration", "all"] = "calibration",
    learning_rate: float = 0.05,
    decay_steps: int = 1000,
    max_steps: int = 20000,
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
        delta_from: keyword-only; ``"calibration"`` (default): the deltas are learned from
            calibration tasks only (tasks with unbiased annotations too), a cut posterior
            as in :func:`fit`: an annotator's delta is then informed by their annotations
            on calibration tasks. The intervals are those of the variational posterior
            given the fitted prior; unlike :func:`fit`'s they are not widened for the
            prior's response to delta (``delta_widening``), so on diffuse labels, where
            that factor is above 1, they can be too narrow by about it. ``"all"``:
            every task informs the deltas through the learned prior (sharper, as right
            as the prior family).
        learning_rate: keyword-only; Adam's initial learning rate.
        decay_steps: keyword-only; the learning rate halves every ``decay_steps`` steps.
        max_steps: keyword-only; SVI step limit.
        tolerance: keyword-only; plateau tolerance in nats per task and window of 250 steps.
        num_particles: keyword-only; ELBO particles per step.
        level: keyword-only; credible level.
        num_draws: keyword-only; posterior draws for the repaired labels.
        num_interval_draws: keyword-only; posterior draws per task for the intervals,
            rounded up to a multiple of ``num_draws``.
        progress: keyword-only; show a progress bar.

    Returns:
        An :class:`AnnotatorFit`.
    """
    from .._io import AnnotationTable, to_counts

    start = time.perf_counter()
    if not isinstance(table, AnnotationTable):
        raise TypeError(
            f"`table` must be an AnnotationTable (see cleverjax.read_annotations); "
            f"got {type(table).__name__}"
        )
    if table.num_annotations == 0:
        raise ValueError("`table` holds no annotations")
    a, b = _checks.beta_pair("delta_prior", delta_prior)
    if not 0 < one_star <= 1:
        raise ValueError(f"`one_star` must lie in (0, 1]; got {one_star}")
    _checks.check_choice("delta_from", delta_from, ("calibration", "all"))
    counts = to_counts(table)
    no_proposal = counts.proposals < 0
    # Tasks never shown a proposal carry only unbiased annotations: population prior.
    proposals = np.where(no_proposal, 0, counts.proposals)
    prep = prepare(counts.biased, proposals, counts.unbiased, no_proposal)
    workers, accepted = _annotator_arrays(table)
    n_tasks = len(proposals)
    data = SPAData(
        host_array(proposals, np.int32),
        host_array(counts.biased, np.int32),
        host_array(counts.unbiased, np.int32),
        host_array(no_proposal, bool),
        host_array(np.ones(n_tasks), jnp.result_type(float)),
        host_array(np.zeros(n_tasks), np.int32),
        prep.data.table,
    ).own_entries()
    annotators = AnnotatorData(host_array(workers), host_array(accepted))
    config = ModelConfig(
        num_classes=counts.biased.shape[1],
        num_components=int(num_components),
        num_terms=prep.num_terms,
        delta_prior=(a, b),
        one_star=one_star,
        num_workers=len(table.workers),
        delta_from=delta_from,
        spikes=bool(spikes),
    )
    identified, cal_images, cal_annotations = _identification(prep)
    if not identified:
        _warn_identification(cal_images, cal_annotations)
    release_compiled_programs()
    k_svi, k_draw, k_prior, k_int = jax.random.split(as_typed_key(key), 4)
    init = initial_prior(prep, config)
    guide = AutoNormal(
        spa_model, init_loc_fn=init_to_value(values={"delta_fraction": 0.2}), init_scale=0.05
    )
    svi = SVI(
        spa_model,
        guide,
        default_adam(learning_rate, int(decay_steps)),
        Trace_ELBO(num_particles=int(num_particles)),
        config=config,
    )
    opt = run_svi(
        svi,
        k_svi,
        (data,),
        {"init": init, "annotators": annotators},
        max_steps=int(max_steps),
        tolerance=float(tolerance),
        scale=float(n_tasks),
        progress=progress,
    )
    prior = prior_from_params(opt.params, config)
    draws = _auto_normal_draws(
        k_draw,
        opt.params,
        2000,
        {"delta_fraction": jax.nn.sigmoid, "spread": jnp.exp, "worker_z": lambda x: x},
    )
    frac = draws["delta_fraction"]
    deltas = one_star * frac
    logit = jnp.log(frac) - jnp.log1p(-frac)
    worker_deltas = one_star * jax.nn.sigmoid(
        logit[:, None] + draws["spread"][:, None] * draws["worker_z"]
    )
    if cal_images == 0:
        deltas, _ = _prior_draws(k_prior, config, 2000)
    pick = jnp.linspace(0, 1999, int(num_draws)).astype(jnp.int32)
    mean, lower, upper = _annotator_summaries(
        k_int,
        data,
        annotators,
        prior,
        worker_deltas[pick],
        jnp.asarray(one_star, jnp.result_type(float)),
        num_terms=config.num_terms,
        level=float(level),
        per_delta=-(-int(num_interval_draws) // int(num_draws)),
    )
    return AnnotatorFit(
        delta=float(jnp.mean(deltas)),
        delta_interval=_interval(deltas, level),
        annotator_delta=jnp.mean(worker_deltas, axis=0),
        annotator_interval=jnp.asarray(_intervals(worker_deltas, level), worker_deltas.dtype),
        spread=float(jnp.mean(draws["spread"])),
        workers=tuple(table.workers),
        tasks=tuple(table.tasks),
        classes=tuple(table.classes),
        posterior_mean=mean,
        lower=lower,
        upper=upper,
        level=float(level),
        losses=host_array(opt.losses),
        converged=opt.converged,
        identified=identified,
        prior=prior,
        params=dict(opt.params),
        seconds=time.perf_counter() - start,
    )
