"""NumPyro model functions of the Bayesian SPA model: the collapsed model (every label
distribution integrated out exactly, see :mod:`cleverjax.bayes.likelihood`), its
variational family for the global parameters, the deterministic quadrature ELBO, and the
plain uncollapsed model for checks."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from jaxtyping import Array
from numpyro.distributions import constraints
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import log_density

from .._checks import is_traced
from .data import LivePairs, SPAData, entry_calibrated, live_pairs
from .likelihood import (
    CONCENTRATION_BOUNDS,
    AnnotatorData,
    DifficultyDelta,
    Prior,
    cut_log_t,
    entry_log_weights,
    log_likelihood,
    log_weights_annotators,
    row_part,
    t_basis,
    t_part_given,
    table_log_weights,
)

DEFAULT_DELTA_PRIOR = (0.5, 0.5)
"""The default Beta prior of ``delta / 1*``: Jeffreys' prior of a rate. Its equal-tailed
intervals keep their coverage near the boundary at 0, where the uniform prior pulls the
estimate inwards (on CIFAR-10H with one biased annotation per image and delta = 0.1, the
uniform prior's 90 % intervals covered 15 of 20 campaigns, Jeffreys' 18 of the same 20;
``benchmarks/coverage.py``)."""


class ModelConfig(NamedTuple):
    """Static settings of :func:`spa_model` (hashable, so they can be jit-static).

    Attributes:
        num_classes: K.
        num_components: mixture components per prior row.
        num_terms: polynomial terms, the largest N + 1.
        delta_prior: Beta(a, b) prior of ``delta / 1*``.
        one_star: fixed 1*, or ``None`` to learn it with the prior ``one_star_prior``.
        one_star_prior: Beta prior of 1* when it is learned (default mean 0.95).
        subsample_size: rows per SVI step (``None``: all rows).
        num_workers: annotators in the per-annotator model (0: one population delta).
        delta_from: ``"calibration"``: delta and 1* are learned only from *calibration*
            rows (with unbiased annotations or a probe proposal) -- a cut posterior: the
            other rows inform the prior and are repaired, but cannot move delta through
            the parametric prior. ``"all"``: every row informs delta (full Bayes).
        spikes: add the two spike components (``p[rho] = 0`` and ``p[rho] = 1``).
        level_terms: polynomial terms of each level of the data given to
            :func:`negative_elbo` as levels (see :func:`cleverjax.bayes.data.split_levels`);
            empty: one level with ``num_terms``.
        delta_by_class: one delta per proposed class instead of one for all images,
            with a hierarchical prior: ``logit(delta_g / 1*) ~ Normal(mu, tau)``, ``mu``
            and ``tau`` learned (empirical Bayes), so that classes with few calibration
            images borrow strength from the others. Only :func:`negative_elbo` (the
            L-BFGS fit) supports it.
        delta_by_difficulty: delta depends on the image's difficulty, linearly in
            ``t = p[rho]`` (see :class:`cleverjax.bayes.likelihood.DifficultyDelta`): two
            global sites, ``delta_fraction`` (``hard / 1*``, at ``t = 0``) and
            ``delta_easy_fraction`` (``easy / 1*``, at ``t = 1``), each with the Beta
            prior ``delta_prior``. Only :func:`negative_elbo` supports it.
        count_bounds: per level of the data given to :func:`negative_elbo`, a bound on
            the rows' counts (see :func:`cleverjax.bayes.likelihood.count_bound`) that
            lets the row part look its Gamma functions up in a table (0, or empty:
            computed per row).
        rejection: the class a rejection chooses: ``"proportional"`` to ``p`` (SPA),
            ``"uniform"`` among the other classes, or ``"mixed"``: every component twice,
            once with each kernel, so that the prior's weights learn the share of images
            annotated either way.
        shrinkage: pseudo-annotations of the hyperprior that pulls each prior component's
            shape over the classes other than its row's proposal toward the row's average
            label (see :func:`shrinkage_log_density`); 0: none.
    """

    num_classes: int
    num_components: int
    num_terms: int
    delta_prior: tuple[float, float] = DEFAULT_DELTA_PRIOR
    one_star: float | None = 0.99
    one_star_prior: tuple[float, float] = (20.0, 1.0)
    subsample_size: int | None = None
    num_workers: int = 0
    delta_from: str = "calibration"
    spikes: bool = True
    level_terms: tuple[int, ...] = ()
    rejection: str = "proportional"
    delta_by_class: bool = False
    count_bounds: tuple[int, ...] = ()
    delta_by_difficulty: bool = False
    shrinkage: float = 0.0


def degree(config: ModelConfig) -> int:
    """Degree in ``t`` of one biased annotation's acceptance probability (see
    :attr:`cleverjax.bayes.likelihood.Prior.degree`)."""
    return 2 if config.delta_by_difficulty else 1


def polynomial_terms(max_annotations: int, degree: int) -> int:
    """Polynomial terms of rows with at most ``max_annotations`` biased annotations, each
    annotation's acceptance probability of ``degree`` in t (see :func:`degree`)."""
    return degree * max_annotations + 1


REJECTION_KERNELS = ("proportional", "uniform", "mixed")
"""Values of :attr:`ModelConfig.rejection` (and of ``fit``'s ``rejection``)."""


def _globals(config: ModelConfig) -> tuple[Array, Array]:
    """1* (fixed, or ``one_star ~ Beta``), then ``delta = 1* * delta_fraction`` with
    ``delta_fraction ~ Beta(delta_prior)``, so that ``0 <= delta <= 1*`` always."""
    if config.one_star is None:
        one_star = numpyro.sample("one_star", dist.Beta(*config.one_star_prior))
    else:
        one_star = jnp.asarray(config.one_star, jnp.result_type(float))
    frac = numpyro.sample("delta_fraction", dist.Beta(*config.delta_prior))
    return numpyro.deterministic("delta", one_star * frac), one_star


def _base_kinds(config: ModelConfig) -> tuple[int, ...]:
    return (0,) * config.num_components + ((1, 2) if config.spikes else ())


def _base_count(config: ModelConfig) -> int:
    """Components of one rejection kernel."""
    return len(_base_kinds(config))


def component_kinds(config: ModelConfig) -> tuple[int, ...]:
    """The prior's component kinds (see :class:`Prior`); with ``rejection="mixed"`` the
    components of one kernel, then the same components with the other."""
    base = _base_kinds(config)
    return base * 2 if config.rejection == "mixed" else base


def component_rejection(config: ModelConfig) -> tuple[bool, ...]:
    """:attr:`Prior.uniform_rejection` of the configuration."""
    base = _base_count(config)
    if config.rejection == "mixed":
        return (False,) * base + (True,) * base
    return (config.rejection == "uniform",) * base


def _prior_from(mean_logits, conc, weight_logits, uniform_logit, config: ModelConfig) -> Prior:
    """The :class:`Prior` from its free parameters. With ``rejection="mixed"`` the two
    kernels share the Dirichlet components: they differ only in their weights, a share
    ``sigmoid(uniform_logit)`` of each prior row's weight going to the uniform kernel."""
    mean = jax.nn.softmax(mean_logits, axis=-1)
    weights = jax.nn.softmax(weight_logits, axis=-1)
    if config.rejection == "mixed":
        share = jax.nn.sigmoid(uniform_logit)[:, None]
        mean = jnp.concatenate([mean, mean], axis=1)
        conc = jnp.concatenate([conc, conc], axis=1)
        weights = jnp.concatenate([weights * (1 - share), weights * share], axis=1)
    return Prior(
        mean, conc, weights, component_kinds(config), component_rejection(config), degree(config)
    )


_prior_from_jit = jax.jit(_prior_from, static_argnums=(4,))


def _prior_params(config: ModelConfig, init: Prior, data: SPAData | None = None) -> Prior:
    # Simplex rows as softmax of free logits: better conditioned for Adam than
    # stick-breaking, and the logits' free offset is harmless.
    start = initial_params(config, init)
    mean_logits = numpyro.param("prior_mean_logits", start["prior_mean_logits"])
    if config.shrinkage > 0 and data is not None:
        target = row_average_labels(data, config.num_classes)
        numpyro.factor(
            "prior_shrinkage", shrinkage_log_density(mean_logits, target, config.shrinkage)
        )
    conc = numpyro.param(
        "prior_concentration",
        start["prior_concentration"],
        constraint=constraints.interval(*CONCENTRATION_BOUNDS),
    )
    weight_logits = numpyro.param("prior_weight_logits", start["prior_weight_logits"])
    uniform_logit = None
    if config.rejection == "mixed":
        uniform_logit = numpyro.param("prior_uniform_logit", start["prior_uniform_logit"])
    return _prior_from(mean_logits, conc, weight_logits, uniform_logit, config)


def prior_from_params(params: dict, config: ModelConfig) -> Prior:
    """The fitted :class:`Prior` from SVI parameters (one compiled program when called
    outside ``jit``, rather than a handful of operations compiled one by one)."""
    return _prior_from_jit(
        params["prior_mean_logits"],
        params["prior_concentration"],
        params["prior_weight_logits"],
        params.get("prior_uniform_logit"),
        config,
    )


def row_average_labels(levels, num_classes: int) -> Array:
    """``(classes + 1, classes)``: the average label of each prior row's images (rows
    grouped by proposal, probes in row K), each image's biased and unbiased counts plus
    1/2 per class, normalised: the target of :func:`shrinkage_log_density`. ``levels``:
    one :class:`SPAData` or a tuple of them (padding rows have weight 0)."""
    levels = (levels,) if isinstance(levels, SPAData) else tuple(levels)
    sums = jnp.zeros((num_classes + 1, num_classes))
    sizes = jnp.zeros((num_classes + 1,))
    for d in levels:
        total = (d.counts + d.unbiased).astype(sums.dtype) + 0.5
        soft = total / jnp.sum(total, axis=1, keepdims=True)
        group = jnp.where(d.probe, num_classes, d.proposals)
        sums = sums.at[group].add(d.weight[:, None] * soft)
        sizes = sizes.at[group].add(d.weight)
    overall = jnp.sum(sums, axis=0) / jnp.maximum(jnp.sum(sizes), 1e-30)
    return jnp.where(sizes[:, None] > 0, sums / jnp.maximum(sizes, 1e-30)[:, None], overall)


def shrinkage_log_density(mean_logits: Array, target: Array, strength: float) -> Array:
    """Log density, up to a constant, of the hyperprior on the prior's component means:
    each component's shape over the classes other than its row's proposal (all classes
    for row K) is ``Dirichlet(1 + strength * target_off)``, ``target_off`` the row's
    average label (:func:`row_average_labels`) on those classes, renormalised. Its mode
    is that average; ``strength`` pseudo-annotations resist a row that has few images
    fitting its own noise (at K = 100 each row has 100 x components mean logits). The
    share on the proposal itself, which carries delta's information, is left free."""
    groups, _, classes = mean_logits.shape
    own = jnp.arange(groups)[:, None] == jnp.arange(classes)[None, :]  # (groups, classes)
    log_off = jax.nn.log_softmax(jnp.where(own[:, None, :], -jnp.inf, mean_logits), axis=-1)
    off = jnp.where(own, 0.0, target)
    off = off / jnp.sum(off, axis=-1, keepdims=True)
    terms = jnp.where(
        own[:, None, :], 0.0, off[:, None, :] * jnp.where(own[:, None, :], 0.0, log_off)
    )
    return strength * jnp.sum(terms)


def spa_model(
    data: SPAData, config: ModelConfig, init: Prior, annotators: AnnotatorData | None = None
) -> None:
    """Collapsed SPA model: every image's label distribution is integrated out exactly.

    Sites: ``delta_fraction`` (Beta prior; ``delta = 1* * delta_fraction``), ``one_star``
    when 1* is learned, and with
    ``annotators`` the per-annotator offsets ``worker_delta = 1* sigmoid(logit(delta / 1*)
    + spread * worker_z)``, ``worker_z ~ Normal(0, 1)``, ``spread ~ HalfNormal(1)``.
    Parameters (empirical Bayes): ``prior_mean_logits``, ``prior_concentration``,
    ``prior_weight_logits``. The factor ``counts`` holds each row's exact log marginal
    likelihood, times its weight, in a plate over rows that can be subsampled.
    """
    delta, one_star = _globals(config)
    prior = _prior_params(config, init, data)
    worker_delta = None
    if annotators is not None:
        spread = numpyro.sample("spread", dist.HalfNormal(1.0))
        with numpyro.plate("workers", config.num_workers):
            z = numpyro.sample("worker_z", dist.Normal(0.0, 1.0))
        # Annotator offsets spread around delta on the logit scale of delta / 1*.
        frac = delta / one_star
        logit = jnp.log(frac) - jnp.log1p(-frac)
        worker_delta = numpyro.deterministic(
            "worker_delta", one_star * jax.nn.sigmoid(logit + spread * z)
        )
    rows = data.num_rows
    with numpyro.plate("images", rows, subsample_size=config.subsample_size) as idx:
        batch = data.take(idx)
        if annotators is None:
            log_w = entry_log_weights(
                data.table,
                delta,
                one_star,
                config.num_terms,
                num_classes=config.num_classes,
                cut=config.delta_from == "calibration",
            )
        else:
            batch = batch.own_entries()
            log_w = log_weights_annotators(
                annotators.worker[idx],
                annotators.accepted[idx],
                worker_delta,
                one_star,
                config.num_terms,
            )
            if config.delta_from == "calibration":
                # The cut: only calibration tasks move the deltas.
                cal = entry_calibrated(batch.table, config.num_classes)[:, None]
                log_w = jnp.where(cal, log_w, jax.lax.stop_gradient(log_w))
        numpyro.factor("counts", batch.weight * log_likelihood(batch, prior, log_w))


def global_guide(
    data: SPAData, config: ModelConfig, init: Prior, annotators: AnnotatorData | None = None
) -> None:
    """Variational family for the global sites: a normal distribution on the logit scale
    of ``delta_fraction`` (and of ``one_star`` when it is learned)."""
    for site, start in _global_sites(config):
        loc = numpyro.param(f"{site}_loc", jnp.asarray(start))
        scale = numpyro.param(f"{site}_scale", jnp.asarray(0.1), constraint=constraints.positive)
        numpyro.sample(
            site,
            dist.TransformedDistribution(
                dist.Normal(loc, scale), dist.transforms.SigmoidTransform()
            ),
        )


def _global_sites(config: ModelConfig) -> list[tuple[str, float]]:
    sites = [("delta_fraction", float(np.log(0.2 / 0.8)))]
    if config.delta_by_difficulty:
        sites.append(("delta_easy_fraction", float(np.log(0.2 / 0.8))))
    if config.one_star is None:
        sites.append(("one_star", float(np.log(0.95 / 0.05))))
    return sites


class QuadratureELBO(ELBO):
    """The ELBO of :func:`global_guide`, with the expectation over the guide computed by
    Gauss-Hermite quadrature instead of sampling.

    The global latent space has one or two dimensions, so a product rule with a few
    nodes per dimension is exact to high order; the objective is then deterministic and
    smooth, and Adam converges without gradient noise.
    """

    def __init__(self, num_nodes: int = 6):
        super().__init__(num_particles=1)
        self.num_nodes = num_nodes

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        config = kwargs["config"]
        sites = [name for name, _ in _global_sites(config)]
        nodes, w = _quadrature(config, jnp.result_type(float), self.num_nodes)
        seeded_model = numpyro.handlers.seed(model, rng_key)

        def elbo_at(zi):
            values = {
                site: jax.nn.sigmoid(param_map[f"{site}_loc"] + param_map[f"{site}_scale"] * zi[j])
                for j, site in enumerate(sites)
            }
            sub = {**param_map, **values}
            log_p, _ = log_density(seeded_model, args, kwargs, sub)
            log_q, _ = log_density(guide, args, kwargs, sub)
            return log_p - log_q

        # Batched, the delta-free part of the likelihood is computed once for all nodes;
        # with many polynomial terms the per-node part dominates memory, so go node by node.
        if config.num_terms <= 64:
            values = jax.vmap(elbo_at)(nodes)
        else:
            values = jax.lax.map(elbo_at, nodes)
        elbo = jnp.sum(w * values)
        return {"loss": -elbo, "mutable_state": None}


# ----------------------------------------------------------------------------------
# The same objective written out, for the quasi-Newton fit
# ----------------------------------------------------------------------------------


def initial_params(config: ModelConfig, init: Prior) -> dict:
    """Starting values of every parameter of :func:`spa_model` and :func:`global_guide`
    (constrained; NumPyro's parameter names)."""
    # On the host (small eager operations would each compile a program), unless the
    # prior is traced: NumPyro's SVI passes it to the model inside its compiled step.
    xp = jnp if is_traced(init.mean) else np
    dtype = np.dtype(init.concentration.dtype)
    mean, conc = xp.asarray(init.mean), xp.asarray(init.concentration)
    weights = xp.asarray(init.weights)
    params = {}
    if config.rejection == "mixed":  # the kernels share their components (see _prior_from)
        c = _base_count(config)
        mean, conc = mean[:, :c], conc[:, :c]
        share = weights[:, c:].sum(axis=1) / weights.sum(axis=1)
        weights = weights[:, :c] + weights[:, c:]
        params["prior_uniform_logit"] = xp.log(share) - xp.log1p(-share)
    params["prior_mean_logits"] = xp.log(mean)
    params["prior_concentration"] = conc
    params["prior_weight_logits"] = xp.log(weights)
    for site, start in _global_sites(config):
        shape = _site_shape(site, config)
        params[f"{site}_loc"] = np.full(shape, start, dtype)
        params[f"{site}_scale"] = np.full(shape, 0.1, dtype)
    if config.delta_by_class:
        params["delta_mean"] = np.asarray(_global_sites(config)[0][1], dtype)
        params["delta_log_spread"] = np.asarray(np.log(0.5), dtype)
    return params


def _site_shape(site: str, config: ModelConfig) -> tuple[int, ...]:
    return (config.num_classes,) if site == "delta_fraction" and config.delta_by_class else ()


def param_constraints(config: ModelConfig) -> dict:
    """The support of each parameter (NumPyro constraints)."""
    out = {
        "prior_mean_logits": constraints.real,
        "prior_concentration": constraints.interval(*CONCENTRATION_BOUNDS),
        "prior_weight_logits": constraints.real,
    }
    if config.rejection == "mixed":
        out["prior_uniform_logit"] = constraints.real
    for site, _ in _global_sites(config):
        out[f"{site}_loc"] = constraints.real
        out[f"{site}_scale"] = constraints.positive
    if config.delta_by_class:
        out["delta_mean"] = constraints.real
        out["delta_log_spread"] = constraints.real
    return out


def global_params(params: dict, config: ModelConfig) -> dict:
    """The parameters of :func:`global_guide` (location and scale of each global site)."""
    return {
        f"{site}_{part}": params[f"{site}_{part}"]
        for site, _ in _global_sites(config)
        for part in ("loc", "scale")
    }


def _quadrature(config: ModelConfig, dtype, num_nodes: int = 6) -> tuple[Array, Array]:
    """Gauss-Hermite product rule over the global sites: nodes ``(nodes, sites)`` and
    weights (summing to one) of :class:`QuadratureELBO` and :func:`negative_elbo`."""
    sites = len(_global_sites(config))
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    weights = weights / weights.sum()
    grid = np.stack([g.ravel() for g in np.meshgrid(*([nodes] * sites), indexing="ij")], 1)
    wgrid = np.meshgrid(*([weights] * sites), indexing="ij")
    w = np.prod(np.stack([g.ravel() for g in wgrid], axis=1), axis=1)
    return jnp.asarray(grid, dtype), jnp.asarray(w, dtype)


def _globals_at(source: dict, z: Array, config: ModelConfig):
    """(site values, delta, 1*, log q) at quadrature node ``z`` under the guide ``source``
    (:func:`global_params` or all parameters)."""
    dtype = source["delta_fraction_loc"].dtype
    log_q, values = 0.0, {}
    for j, (site, _) in enumerate(_global_sites(config)):
        loc, scale = source[f"{site}_loc"], source[f"{site}_scale"]
        x = loc + scale * z[j]
        v = jax.nn.sigmoid(x)
        values[site] = v
        # Normal on the logit scale, pushed through the sigmoid (summed over the classes
        # when delta has one value per class: the guide is a product over them).
        log_q = log_q + jnp.sum(dist.Normal(loc, scale).log_prob(x) - jnp.log(v) - jnp.log1p(-v))
    star = values["one_star"] if "one_star" in values else jnp.asarray(config.one_star, dtype)
    delta = star * values["delta_fraction"]
    if config.delta_by_difficulty:
        delta = DifficultyDelta(delta, star * values["delta_easy_fraction"])
    return values, delta, star, log_q


def _levels(data, config: ModelConfig) -> tuple[tuple[SPAData, ...], tuple[int, ...]]:
    """The data as levels and each level's polynomial terms."""
    if isinstance(data, SPAData):
        return (data,), (config.num_terms,)
    terms = config.level_terms or (config.num_terms,)
    if len(terms) != len(data):
        raise ValueError(f"{len(data)} levels of data but `level_terms` {terms}")
    return tuple(data), terms


class Frozen(NamedTuple):
    """What :func:`negative_elbo` needs under the cut besides the parameters.

    Attributes:
        log_w: ``(nodes, entries, terms)`` log W_s of every entry at every quadrature
            node under the frozen globals (used by the entries that are not calibration
            data).
        live: the calibration entries' (c, N) pairs, whose weights follow the current
            globals (see :class:`cleverjax.bayes.data.LivePairs`).
    """

    log_w: Array
    live: LivePairs


def _frozen_log_w(frozen: dict, data, config: ModelConfig):
    levels, terms = _levels(data, config)
    z, _ = _quadrature(config, frozen["delta_fraction_loc"].dtype)

    def at(zi):
        _, delta, star, _ = _globals_at(frozen, zi, config)
        return tuple(table_log_weights(d.table, delta, star, n) for d, n in zip(levels, terms))

    return jax.lax.map(at, z)


_frozen_log_w_jit = jax.jit(_frozen_log_w, static_argnums=2)


def freeze(frozen: dict, data, config: ModelConfig, live=None):
    """The :class:`Frozen` argument of :func:`negative_elbo` for the globals ``frozen``
    (:func:`global_params` of an earlier point); one per level when ``data`` is a tuple
    of levels; ``None`` without the cut. ``live``: the levels' :class:`LivePairs`, when
    already computed (they depend on the data only)."""
    if config.delta_from != "calibration":
        return None
    levels, _ = _levels(data, config)
    if live is None:
        live = tuple(live_pairs(d.table, config.num_classes) for d in levels)
    out = tuple(Frozen(w, lv) for w, lv in zip(_frozen_log_w_jit(frozen, data, config), live))
    return out[0] if isinstance(data, SPAData) else out


def _delta_log_prior(params: dict, values: dict, z: Array, config: ModelConfig) -> Array:
    """Log prior density of ``delta / 1*`` at a quadrature node (``values``: the sites'
    values there): the Beta prior (of both ends with ``delta_by_difficulty``), or with
    ``delta_by_class`` the hierarchical normal prior on the logit scale (as a density of
    the fraction, the same scale as the guide's ``log_q``), summed over the classes."""
    fraction = values["delta_fraction"]
    if config.delta_by_difficulty:
        fraction = jnp.stack([fraction, values["delta_easy_fraction"]])
    if not config.delta_by_class:
        return jnp.sum(dist.Beta(*config.delta_prior).log_prob(fraction))
    x = params["delta_fraction_loc"] + params["delta_fraction_scale"] * z
    spread = jnp.exp(params["delta_log_spread"])
    density = dist.Normal(params["delta_mean"], spread).log_prob(x)
    return jnp.sum(density - jnp.log(fraction) - jnp.log1p(-fraction))


def negative_elbo(params: dict, data, frozen, config: ModelConfig) -> Array:
    """The loss of :class:`QuadratureELBO` on :func:`spa_model` and :func:`global_guide`
    (without annotators or subsampling), written out as one function of the constrained
    parameters, for the quasi-Newton optimiser.

    ``data`` is one :class:`SPAData`, or a tuple of levels (rows grouped by their number
    of annotations, see :func:`cleverjax.bayes.data.split_levels`) whose polynomial terms
    are ``config.level_terms``: the loss is the sum over the levels, and each level pays
    only for its own terms.

    With the cut (``delta_from="calibration"``), entries that are not calibration data
    take their weights from ``frozen`` (:func:`freeze` of the globals of an earlier
    point) instead of the globals of ``params``: the loss is then a true function of
    ``params`` whose gradient is the cut's, so that a line search can trust its values
    (with ``stop_gradient`` the values would follow one objective and the gradient
    another). Only the calibration entries' weights are computed at every evaluation. With
    the frozen globals equal to ``global_params(params)`` value and gradient equal
    NumPyro's; the fit iterates them to that fixed point. Without the cut ``frozen`` is
    unused (``None``).
    """
    dtype = params["prior_concentration"].dtype
    prior = prior_from_params(params, config)
    levels, terms = _levels(data, config)
    z, w = _quadrature(config, dtype)
    # The delta-free parts, once for every node.
    bounds = config.count_bounds or (0,) * len(levels)
    rows = [row_part(d, prior, b) for d, b in zip(levels, bounds)]
    bases = [t_basis(d.table, prior, n) for d, n in zip(levels, terms)]
    cut = config.delta_from == "calibration"
    if not cut:
        node_w = tuple(jnp.zeros((z.shape[0],), dtype) for _ in levels)  # placeholders
        live = (None,) * len(levels)
    else:
        frozen = (frozen,) if isinstance(data, SPAData) else tuple(frozen)
        node_w, live = tuple(f.log_w for f in frozen), tuple(f.live for f in frozen)

    def globals_at(zi):
        values, _, star, log_q = _globals_at(params, zi, config)
        log_joint = _delta_log_prior(params, values, zi[0], config) - log_q
        if "one_star" in values:
            log_joint = log_joint + dist.Beta(*config.one_star_prior).log_prob(star)
        return log_joint

    def level_at(zi, frozen_w, d, n, r, b, lv):
        _, delta, star, _ = _globals_at(params, zi, config)
        if not cut:
            log_w = table_log_weights(d.table, delta, star, n)
            log_t = t_part_given(d.table, prior, b, log_w).log_t
        elif lv.c.shape[0] == 0:  # no calibration entry: all weights frozen
            log_t = t_part_given(d.table, prior, b, frozen_w).log_t
        else:
            log_t = cut_log_t(d.table, prior, b, frozen_w, lv, delta, star, n)
        return jnp.sum(d.weight * logsumexp(log_t[d.entry] + r.log_rest, axis=-1))

    values = jax.vmap(globals_at)(z)
    # Each level maps over the nodes by itself: all at once where its polynomials are
    # short, one node at a time where they are long (bounded memory); a few long rows
    # then leave the short rows' computation as it is without them.
    for d, n, r, b, f, lv in zip(levels, terms, rows, bases, node_w, live):
        fn = functools.partial(level_at, d=d, n=n, r=r, b=b, lv=lv)
        if n <= 64:
            values = values + jax.vmap(fn)(z, f)
        else:
            values = values + jax.lax.map(lambda a, fn=fn: fn(*a), (z, f))
    loss = -jnp.sum(w * values)
    if config.shrinkage > 0:
        target = row_average_labels(levels, config.num_classes)
        loss = loss - shrinkage_log_density(params["prior_mean_logits"], target, config.shrinkage)
    return loss


def spa_model_uncollapsed(
    counts: Array,
    proposals: Array,
    *,
    delta_prior=DEFAULT_DELTA_PRIOR,
    one_star: float = 0.99,
    mean: Array,
    concentration: Array,
) -> None:
    """The plain (uncollapsed) SPA model with a per-image latent ``p``, for checks and NUTS
    on small problems: ``p ~ Dirichlet(concentration[rho] * mean[rho])``,
    ``counts ~ Multinomial(N, p_b)``. ``mean`` is ``(K, K)``, ``concentration`` ``(K,)``."""
    num_classes = counts.shape[1]
    delta = numpyro.sample("delta", dist.Beta(*delta_prior))
    with numpyro.plate("images", counts.shape[0]):
        p = numpyro.sample("p", dist.Dirichlet(concentration[proposals][:, None] * mean[proposals]))
        is_rho = proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
        p_rho = jnp.sum(jnp.where(is_rho, p, 0.0), axis=1)
        acc = delta + (one_star - delta) * p_rho
        rest = jnp.where(is_rho, 0.0, p) / jnp.maximum(1 - p_rho, 1e-12)[:, None]
        p_b = acc[:, None] * is_rho.astype(p.dtype) + (1 - acc)[:, None] * rest
        numpyro.sample("counts", dist.Multinomial(jnp.sum(counts, axis=1), probs=p_b), obs=counts)
