"""The Bayesian SPA model: exact collapsed likelihood and NumPyro model functions.

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
is a finite mixture of Betas. Nothing is approximated. The part in ``t`` depends on an
image only through (prior row, proposal, c, N, u, M), so it is computed once per distinct
such *entry*; identical images are merged into weighted rows. The cost per step is then
nearly independent of the number of images.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import betaln, gammaln, logsumexp
from jaxtyping import Array, Bool, Float, Int
from numpyro.distributions import constraints
from numpyro.infer.elbo import ELBO
from numpyro.infer.util import log_density


class EntryTable(NamedTuple):
    """Distinct (prior row, proposal, c, N, u, M) tuples: everything the part of the
    likelihood in ``t = p[rho]`` depends on.

    Attributes:
        group: ``(entries,)`` prior row: the proposal, or K for a probe.
        rho: ``(entries,)`` proposed class.
        c: ``(entries,)`` biased annotations on the proposal.
        n: ``(entries,)`` biased annotations N.
        u: ``(entries,)`` unbiased annotations on the proposal.
        m: ``(entries,)`` unbiased annotations M.
        pair: ``(entries,)`` index of the entry's (c, N) pair: the polynomial weights
            depend on nothing else, so they are computed once per pair.
        pair_c: ``(pairs,)`` c of each distinct pair.
        pair_n: ``(pairs,)`` N of each distinct pair.
    """

    group: Int[Array, " entries"]
    rho: Int[Array, " entries"]
    c: Int[Array, " entries"]
    n: Int[Array, " entries"]
    u: Int[Array, " entries"]
    m: Int[Array, " entries"]
    pair: Int[Array, " entries"]
    pair_c: Int[Array, " pairs"]
    pair_n: Int[Array, " pairs"]

    def log_weights(
        self, delta: Array, one_star: Array, num_terms: int
    ) -> Float[Array, "entries terms"]:
        """log W_s of every entry, computed once per (c, N) pair."""
        return log_weights_counts(self.pair_c, self.pair_n, delta, one_star, num_terms)[self.pair]


class SPAData(NamedTuple):
    """Images for the model, after merging identical rows (their ``weight`` counts them).

    Attributes:
        proposals: ``(rows,)`` proposed class.
        counts: ``(rows, classes)`` biased counts (annotations made with the proposal).
        unbiased: ``(rows, classes)`` unbiased counts (no proposal shown).
        probe: ``(rows,)`` the proposal was drawn at random, independently of the image.
        weight: ``(rows,)`` how many images share this row (0 for padding).
        entry: ``(rows,)`` the row's entry in ``table``.
        table: the distinct entries (see :class:`EntryTable`).
    """

    proposals: Int[Array, " rows"]
    counts: Int[Array, "rows classes"]
    unbiased: Int[Array, "rows classes"]
    probe: Bool[Array, " rows"]
    weight: Float[Array, " rows"]
    entry: Int[Array, " rows"]
    table: EntryTable

    def take(self, idx) -> SPAData:
        """The rows ``idx`` (the entry table is shared)."""
        rows = (self.proposals, self.counts, self.unbiased, self.probe, self.weight, self.entry)
        return SPAData(*(x[idx] for x in rows), self.table)

    def own_entries(self) -> SPAData:
        """The same rows with one entry each (for likelihoods that differ per row)."""
        return self._replace(
            entry=jnp.arange(self.num_rows, dtype=jnp.int32), table=row_entries(self)
        )

    @property
    def num_rows(self) -> int:
        return self.proposals.shape[0]


def row_entries(data: SPAData) -> EntryTable:
    """Each row's entry (traceable)."""
    num_classes = data.counts.shape[1]
    is_rho = data.proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
    c = jnp.sum(jnp.where(is_rho, data.counts, 0), axis=1)
    n = jnp.sum(data.counts, axis=1)
    return EntryTable(
        group=jnp.where(data.probe, num_classes, data.proposals).astype(jnp.int32),
        rho=data.proposals.astype(jnp.int32),
        c=c,
        n=n,
        u=jnp.sum(jnp.where(is_rho, data.unbiased, 0), axis=1),
        m=jnp.sum(data.unbiased, axis=1),
        pair=jnp.arange(data.proposals.shape[0], dtype=jnp.int32),
        pair_c=c,
        pair_n=n,
    )


class Prior(eqx.Module):
    """Class-conditional mixture prior over label distributions.

    Row ``g < K`` is the prior of images proposed as class ``g``; row ``K`` is the
    population prior used for probe images. A component is a Dirichlet (``kind`` 0), or
    a *spike*: ``p[rho] = 0`` exactly (``kind`` 1) or ``p[rho] = 1`` exactly (``kind`` 2),
    the rest following the component's Dirichlet. Spikes model what real soft labels
    are full of: classes that no annotator chose, and unanimous images.

    Attributes:
        mean: ``(K + 1, components, K)`` Dirichlet means (rows on the simplex).
        concentration: ``(K + 1, components)`` Dirichlet concentrations (> 0).
        weights: ``(K + 1, components)`` mixture weights (rows on the simplex).
        kind: static tuple, one entry per component: 0 Dirichlet, 1 spike at
            ``p[rho] = 0``, 2 spike at ``p[rho] = 1``.
    """

    mean: Float[Array, "groups components classes"]
    concentration: Float[Array, "groups components"]
    weights: Float[Array, "groups components"]
    kind: tuple[int, ...] = eqx.field(static=True)


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


def _masked_logsumexp(x: Array, valid: Array, axis: int = -1) -> Array:
    """logsumexp over the valid entries, -inf where none is valid, with finite gradients
    (the double-where trick: never differentiate a logsumexp of only -inf)."""
    any_valid = jnp.any(valid, axis=axis)
    safe = jnp.where(jnp.expand_dims(any_valid, axis), jnp.where(valid, x, -jnp.inf), 0.0)
    return jnp.where(any_valid, logsumexp(safe, axis=axis), -jnp.inf)


def log_weights_counts(
    c_rho: Array, n: Array, delta: Array, one_star: Array, num_terms: int
) -> Float[Array, "entries terms"]:
    """log W_s, s = 0..num_terms-1, of ``A^c (1-A)^(N-c)`` in the basis t^s (1-t)^(N-s).

    ``W_s = sum_{i+j=s} C(c,i) 1*^i delta^(c-i) C(N-c,j) (1-1*)^j (1-delta)^(N-c-j)``;
    ``-inf`` for ``s > N``. ``num_terms`` must exceed the largest N.
    """
    dtype = jnp.result_type(delta, one_star)
    c = c_rho.astype(dtype)[:, None, None]
    r = (n - c_rho).astype(dtype)[:, None, None]
    s = jnp.arange(num_terms, dtype=dtype)[None, :, None]
    i = jnp.arange(num_terms, dtype=dtype)[None, None, :]
    j = s - i
    valid = (i <= c) & (j >= 0) & (j <= r)
    ic, jc = jnp.clip(i, 0, c), jnp.clip(j, 0, r)
    # Binomial coefficients from a table of log factorials.
    log_fact = gammaln(jnp.arange(num_terms, dtype=dtype) + 1.0)

    def lf(x):
        return log_fact[x.astype(jnp.int32)]

    binoms = lf(c) - lf(ic) - lf(c - ic) + lf(r) - lf(jc) - lf(r - jc)
    ld, l1d = jnp.log(delta), jnp.log1p(-delta)
    lw, l1w = jnp.log(one_star), jnp.log1p(-one_star)
    term = binoms + _xlogy(ic, lw) + _xlogy(c - ic, ld) + _xlogy(jc, l1w) + _xlogy(r - jc, l1d)
    return _masked_logsumexp(term, valid & (term > -jnp.inf))


def entry_calibrated(table: EntryTable, num_classes: int) -> Bool[Array, " entries"]:
    """Entries that identify delta: biased annotations plus unbiased ones or a probe."""
    return (table.n > 0) & ((table.m > 0) | (table.group == num_classes))


def calibrated(data: SPAData) -> Bool[Array, " rows"]:
    """Rows that identify delta: biased annotations plus unbiased ones or a probe proposal."""
    return entry_calibrated(data.table, data.counts.shape[1])[data.entry]


def entry_log_weights(
    table: EntryTable, delta: Array, one_star: Array, num_terms: int, *, num_classes: int, cut: bool
) -> Float[Array, "entries terms"]:
    """log W_s of every entry. With ``cut``, entries that are not calibration data see
    delta and 1* through ``stop_gradient``: they cannot move them (a cut posterior)."""
    log_w = table.log_weights(delta, one_star, num_terms)
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


class _Terms(NamedTuple):
    """Exact collapsed likelihood pieces under every mixture component: the part in t per
    entry, the rest per row."""

    log_marginal: Array  # (rows, comps)
    log_mix: Array  # (entries, comps, terms): log posterior weight of each Beta term of t
    a_t: Array  # (entries, comps) Beta prior of t
    b_t: Array  # (entries, comps)
    a_rest: Array  # (rows, comps, K) Dirichlet posterior of r (zero at rho)


def _t_part(table: EntryTable, prior: Prior, log_w: Array):
    """Per entry and component: log of the integral over t, and its Beta terms."""
    dtype = log_w.dtype
    num_terms = log_w.shape[1]
    kinds = np.asarray(prior.kind)
    dirichlet = np.flatnonzero(kinds == 0)
    conc = prior.concentration[table.group]  # (E, comps)
    share = jnp.take_along_axis(prior.mean[table.group], table.rho[:, None, None], axis=2)[..., 0]
    a_t = jnp.maximum(conc * share, MIN_ALPHA)
    b_t = jnp.maximum(conc * (1 - share), MIN_ALPHA)
    n = table.n.astype(dtype)[:, None, None]
    m = table.m.astype(dtype)[:, None, None]
    u = table.u.astype(dtype)[:, None, None]
    s = jnp.arange(num_terms, dtype=dtype)[None, None, :]
    # Dirichlet components: t ~ Beta(a_t, b_t), a finite sum of Beta-function ratios.
    a_d, b_d = a_t[:, dirichlet], b_t[:, dirichlet]
    valid = s <= n
    left = a_d[..., None] + u + s
    right = jnp.where(valid, b_d[..., None] + m - u + n - s, 1.0)
    log_mix_d = jnp.where(
        valid, log_w[:, None, :] + betaln(left, right) - betaln(a_d, b_d)[..., None], -jnp.inf
    )
    # Spikes: t = 0 keeps only the s = 0 term (and needs no unbiased vote for rho);
    # t = 1 keeps only s = N (and needs every unbiased vote on rho).
    spikes = []
    for kind in kinds[kinds > 0]:
        keep = (s == 0) & (u == 0) if kind == 1 else (s == n) & (u == m)
        spikes.append(jnp.where(keep, log_w[:, None, :], -jnp.inf))
    log_mix = jnp.concatenate([log_mix_d, *spikes], axis=1)
    return _masked_logsumexp(log_mix, jnp.isfinite(log_mix)), log_mix, a_t, b_t


def component_terms(data: SPAData, prior: Prior, log_w: Array) -> _Terms:
    """Exact collapsed likelihood of every row under every component, given ``log_w`` for
    every entry of ``data.table``."""
    dtype = log_w.dtype
    num_classes = data.counts.shape[1]
    log_t, log_mix, a_t, b_t = _t_part(data.table, prior, log_w)
    g = jnp.where(data.probe, num_classes, data.proposals)
    alpha = jnp.maximum(prior.concentration[g][..., None] * prior.mean[g], MIN_ALPHA)
    is_rho = data.proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
    a_rest_prior = jnp.where(is_rho[:, None, :], 0.0, alpha)
    counts = data.counts.astype(dtype)
    unbiased = data.unbiased.astype(dtype)
    others = jnp.where(is_rho, 0.0, counts + unbiased)[:, None, :]
    a_rest = a_rest_prior + others
    # Multivariate Beta ratio B(a + x) / B(a) over the classes other than rho; only
    # classes with counts contribute to the product of Gamma ratios.
    seen = (others > 0) & ~is_rho[:, None, :]
    log_r = (
        jnp.sum(
            jnp.where(
                seen,
                gammaln(jnp.where(seen, a_rest, 1.0)) - gammaln(jnp.where(seen, a_rest_prior, 1.0)),
                0.0,
            ),
            axis=-1,
        )
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
    log_marginal = log_t[data.entry] + log_r + const[:, None] + jnp.log(prior.weights[g])
    return _Terms(log_marginal, log_mix, a_t, b_t, a_rest)


def log_likelihood(data: SPAData, prior: Prior, log_w: Array) -> Float[Array, " rows"]:
    """Exact log marginal likelihood of each row (the label distribution integrated out)."""
    return logsumexp(component_terms(data, prior, log_w).log_marginal, axis=-1)


def _term_weights(log_mix: Array) -> Array:
    """Normalised weights of the Beta terms; zero for a component with no valid term."""
    top = jnp.max(log_mix, axis=-1, keepdims=True)
    ok = jnp.isfinite(top)
    w = jnp.exp(log_mix - jnp.where(ok, top, 0.0))
    return jnp.where(ok, w / jnp.where(ok, jnp.sum(w, axis=-1, keepdims=True), 1.0), 0.0)


def posterior_moments(data: SPAData, prior: Prior, log_w: Array) -> Float[Array, "rows classes"]:
    """Exact posterior mean of p for each row, given delta and 1* (through ``log_w``)."""
    terms = component_terms(data, prior, log_w)
    dtype = log_w.dtype
    num_classes = data.counts.shape[1]
    table = data.table
    mix = _term_weights(terms.log_mix)  # (E, comps, terms)
    s = jnp.arange(log_w.shape[1], dtype=dtype)[None, None, :]
    total = (table.n + table.m).astype(dtype)[:, None]
    mean_t_terms = (terms.a_t[..., None] + table.u.astype(dtype)[:, None, None] + s) / (
        terms.a_t + terms.b_t + total
    )[..., None]
    kind = jnp.asarray(prior.kind)[None, :]
    mean_t = jnp.where(
        kind == 0, jnp.sum(mix * mean_t_terms, axis=-1), jnp.where(kind == 1, 0.0, 1.0)
    )[data.entry]  # (rows, comps)
    resp = jax.nn.softmax(terms.log_marginal, axis=-1)  # (rows, comps)
    is_rho = data.proposals[:, None] == jnp.arange(num_classes, dtype=jnp.int32)[None, :]
    mean_r = terms.a_rest / jnp.sum(terms.a_rest, axis=-1, keepdims=True)
    mean_p = (1 - mean_t)[..., None] * mean_r + mean_t[..., None] * is_rho[:, None, :].astype(dtype)
    return jnp.sum(resp[..., None] * mean_p, axis=1)


# ----------------------------------------------------------------------------------
# NumPyro models
# ----------------------------------------------------------------------------------


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
    """

    num_classes: int
    num_components: int
    num_terms: int
    delta_prior: tuple[float, float] = (1.0, 1.0)
    one_star: float | None = 0.99
    one_star_prior: tuple[float, float] = (20.0, 1.0)
    subsample_size: int | None = None
    num_workers: int = 0
    delta_from: str = "calibration"
    spikes: bool = True


def _globals(config: ModelConfig) -> tuple[Array, Array]:
    """1* (fixed, or ``one_star ~ Beta``), then ``delta = 1* * delta_fraction`` with
    ``delta_fraction ~ Beta(delta_prior)``, so that ``0 <= delta <= 1*`` always."""
    if config.one_star is None:
        one_star = numpyro.sample("one_star", dist.Beta(*config.one_star_prior))
    else:
        one_star = jnp.asarray(config.one_star, jnp.result_type(float))
    frac = numpyro.sample("delta_fraction", dist.Beta(*config.delta_prior))
    return numpyro.deterministic("delta", one_star * frac), one_star


def component_kinds(config: ModelConfig) -> tuple[int, ...]:
    return (0,) * config.num_components + ((1, 2) if config.spikes else ())


def _prior_params(config: ModelConfig, init: Prior) -> Prior:
    # Simplex rows as softmax of free logits: better conditioned for Adam than
    # stick-breaking, and the logits' free offset is harmless.
    mean_logits = numpyro.param("prior_mean_logits", jnp.log(init.mean))
    conc = numpyro.param(
        "prior_concentration",
        init.concentration,
        constraint=constraints.interval(*CONCENTRATION_BOUNDS),
    )
    weight_logits = numpyro.param("prior_weight_logits", jnp.log(init.weights))
    return Prior(
        jax.nn.softmax(mean_logits, axis=-1),
        conc,
        jax.nn.softmax(weight_logits, axis=-1),
        component_kinds(config),
    )


def prior_from_params(params: dict, config: ModelConfig) -> Prior:
    """The fitted :class:`Prior` from SVI parameters."""
    return Prior(
        jax.nn.softmax(params["prior_mean_logits"], axis=-1),
        params["prior_concentration"],
        jax.nn.softmax(params["prior_weight_logits"], axis=-1),
        component_kinds(config),
    )


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
    prior = _prior_params(config, init)
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
        nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
        self.nodes = nodes
        self.weights = weights / weights.sum()

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        config = kwargs["config"]
        sites = [name for name, _ in _global_sites(config)]
        grids = np.meshgrid(*([self.nodes] * len(sites)), indexing="ij")
        wgrid = np.meshgrid(*([self.weights] * len(sites)), indexing="ij")
        z = jnp.asarray(np.stack([g.ravel() for g in grids], axis=1))
        w = jnp.asarray(np.prod(np.stack([g.ravel() for g in wgrid], axis=1), axis=1))
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

        elbo = jnp.sum(w * jax.vmap(elbo_at)(z.astype(jnp.result_type(float))))
        return {"loss": -elbo, "mutable_state": None}


def spa_model_uncollapsed(
    counts: Array,
    proposals: Array,
    *,
    delta_prior=(1.0, 1.0),
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


def _unique_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of ``a`` (in an arbitrary but fixed order), each row's index among
    them, and their multiplicities. Rows are compared as raw bytes: sorting one opaque
    item per row is an order of magnitude faster than ``np.unique(axis=0)``."""
    a = np.ascontiguousarray(a)
    flat = a.view(np.dtype((np.void, a.itemsize * a.shape[1]))).reshape(-1)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    return uniq.view(a.dtype).reshape(-1, a.shape[1]), inverse.reshape(-1), counts


def compress(
    proposals: np.ndarray, counts: np.ndarray, unbiased: np.ndarray, probe: np.ndarray
) -> tuple[SPAData, np.ndarray]:
    """Merge identical images into weighted rows and list the distinct entries; return the
    rows and each image's row.

    The likelihood depends on an image only through (proposal, probe, counts, unbiased),
    so the exact objective over all images is a weighted sum over distinct rows.
    """
    n, k = counts.shape
    # The narrowest integer type that holds every value: the sort behind np.unique is
    # the memory peak of a large fit, and int16 keys take a quarter of int64's.
    largest = max(int(counts.max(initial=0)), int(unbiased.max(initial=0)), k)
    dtype = next(t for t in (np.int16, np.int32, np.int64) if largest <= np.iinfo(t).max)
    key = np.empty((n, 2 + 2 * k), dtype)
    key[:, 0], key[:, 1], key[:, 2 : 2 + k], key[:, 2 + k :] = proposals, probe, counts, unbiased
    uniq, inverse, weight = _unique_rows(key)
    del key
    uniq = uniq.astype(np.int64)
    rho = uniq[:, 0]
    is_probe = uniq[:, 1] > 0
    c = uniq[:, 2 : 2 + k]
    u = uniq[:, 2 + k :]
    rows = np.arange(len(rho))
    entry_key = np.stack(
        [np.where(is_probe, k, rho), rho, c[rows, rho], c.sum(axis=1), u[rows, rho], u.sum(axis=1)],
        axis=1,
    )
    entries, entry, _ = _unique_rows(entry_key)
    pairs, pair, _ = _unique_rows(entries[:, 2:4])
    as_i32 = lambda x: jnp.asarray(x, jnp.int32)  # noqa: E731
    data = SPAData(
        proposals=as_i32(rho),
        counts=as_i32(c),
        unbiased=as_i32(u),
        probe=jnp.asarray(is_probe),
        weight=jnp.asarray(weight, jnp.result_type(float)),
        entry=as_i32(entry.reshape(-1)),
        table=EntryTable(
            *(as_i32(entries[:, i]) for i in range(6)),
            pair=as_i32(pair.reshape(-1)),
            pair_c=as_i32(pairs[:, 0]),
            pair_n=as_i32(pairs[:, 1]),
        ),
    )
    return data, inverse.reshape(-1)
