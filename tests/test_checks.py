"""Model checks (cleverjax.bayes.checks): hand-derived pieces, each check on SPA data
(must pass) and on its misspecified scenario (negative control, must fail), skips and
bad input.

Statistical tests use fixed keys. Each check is a level-0.01 test, so an SPA data set
fails it with probability 0.01 by design (not a tolerance we chose); the negative controls
are sized (thousands of calibration images) so that their power is near 1.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cleverjax as cj
from cleverjax.bayes import ModelCheck, ModelCheckWarning, Prior, model_checks, warn_failed
from cleverjax.bayes import checks as mc

DELTA, ONE_STAR = 0.3, 0.99


# ----------------------------------------------------------------------------------
# Simulators
# ----------------------------------------------------------------------------------


SIM_ROWS = 3000
"""SPA counts are simulated for this many rows (padding repeats row 0) and sliced, so that
every test shares one compiled simulator per number of classes."""


def spa_counts(seed, p, rho, num=10, delta=DELTA):
    n = len(rho)
    assert n <= SIM_ROWS
    pad = np.concatenate([np.arange(n), np.zeros(SIM_ROWS - n, np.int64)])
    counts = cj.simulate_counts(
        jax.random.key(seed), p[pad].astype(np.float32), rho[pad], num_annotations=num,
        delta=delta, one_star=ONE_STAR,
    )  # fmt: skip
    return np.asarray(counts)[:n]


def misspecified_counts(rng, p, rho, num, scenario):
    """Uniform rejection (accept with A, else uniform over the other K - 1 classes), or
    SPA with delta_i = 0.1 + 0.5 (1 - p_i[rho])."""
    n, k = p.shape
    rows = np.arange(n)
    t = p[rows, rho]
    delta = np.full(n, DELTA) if scenario == "uniform" else 0.1 + 0.5 * (1 - t)
    accepted = rng.binomial(num, delta + (ONE_STAR - delta) * t)
    w = np.ones_like(p) if scenario == "uniform" else p.copy()
    w[rows, rho] = 0.0
    w = np.where(w.sum(1, keepdims=True) > 0, w, 1.0)
    w[rows, rho] = 0.0
    counts = rng.multinomial(num - accepted, w / w.sum(1, keepdims=True))
    counts[rows, rho] = accepted
    return counts


def calibration_data(seed, n, scenario="spa", k=10, conc=0.3):
    """``n`` calibration images: Dirichlet(conc) truth, argmax proposals, 10 biased and
    10 unbiased annotations each."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(k, conc), size=n)
    rho = p.argmax(axis=1).astype(np.int32)
    u = rng.multinomial(10, p)
    b = (
        spa_counts(seed, p, rho)
        if scenario == "spa"
        else misspecified_counts(rng, p, rho, 10, scenario)
    )
    return b, rho, u


def true_prior(k=3):
    """A class-conditional prior with a Dirichlet and both spikes (kinds 0, 1, 2)."""
    mean = np.full((k + 1, 3, k), 1.0 / k)
    for g in range(k):
        mean[g, 0] = 0.4 / (k - 1)
        mean[g, 0, g] = 0.6
    conc = np.full((k + 1, 3), 3.0)
    weights = np.tile([0.7, 0.1, 0.2], (k + 1, 1))
    f = jnp.result_type(float)
    return Prior(jnp.asarray(mean, f), jnp.asarray(conc, f), jnp.asarray(weights, f), (0, 1, 2))


def sample_from_prior(seed, prior, n, num=10, delta_fn=None):
    """Images drawn from the model itself: rho uniform, component, then p; biased counts
    by SPA (or with a per-image delta ``delta_fn(t)``)."""
    rng = np.random.default_rng(seed)
    k = prior.mean.shape[2]
    rho = rng.integers(0, k, n).astype(np.int32)
    w = np.asarray(prior.weights)[rho]
    z = (rng.random(n)[:, None] > np.cumsum(w, axis=1)).sum(axis=1)
    alpha = np.asarray(prior.concentration)[rho, z][:, None] * np.asarray(prior.mean)[rho, z]
    p = rng.dirichlet(np.ones(k), size=n)
    for i in range(n):
        p[i] = rng.dirichlet(alpha[i])
        if z[i] > 0:  # spikes: p[rho] = 0 (kind 1) or 1 (kind 2), the rest Dirichlet
            rest = np.delete(alpha[i], rho[i])
            q = rng.dirichlet(rest)
            p[i] = np.insert(q, rho[i], 0.0) if z[i] == 1 else np.eye(k)[rho[i]]
    if delta_fn is None:
        return spa_counts(seed, p, rho, num), rho
    t = p[np.arange(n), rho]
    d = delta_fn(t)
    accepted = rng.binomial(num, d + (ONE_STAR - d) * t)
    counts = np.zeros((n, k), np.int64)
    counts[np.arange(n), rho] = accepted
    return counts, rho


def by_name(checks):
    return {c.name: c for c in checks}


# ----------------------------------------------------------------------------------
# Hand-derived pieces
# ----------------------------------------------------------------------------------


def test_rejected_statistic_by_hand():
    # Pool (0, 2, 2) with 2 rejected on class 1 and 2 unbiased on class 2: a = 1/2,
    # E = T a = (0, 1, 1); chi-square (2-1)^2/(2/4) + (0-1)^2/(2/4) = 4.
    x = np.array([[0, 2, 0]])
    total = np.array([[0, 2, 2]])
    assert mc._rejected_statistic(x, total, np.array([0.5])) == pytest.approx(4.0)
    # Proportional rows give 0.
    x = np.array([[0, 1, 2]])
    total = np.array([[0, 2, 4]])
    assert mc._rejected_statistic(x, total, np.array([0.5])) == pytest.approx(0.0)


def test_uniform_statistic_by_hand():
    # Pool (0, 2, 2), two rejected: unbiased (0, 0, 2) is more concentrated than
    # (0, 1, 1), so it speaks more for uniform rejection:
    # 2 lgamma(1/2) + lgamma(5/2) against lgamma(1/2) + 2 lgamma(3/2).
    total = np.array([[0, 2, 2]])
    lg = math.lgamma
    concentrated = mc._uniform_statistic(np.array([[0, 2, 0]]), total)
    spread = mc._uniform_statistic(np.array([[0, 1, 1]]), total)
    assert concentrated == pytest.approx(2 * lg(0.5) + lg(2.5))
    assert spread == pytest.approx(lg(0.5) + 2 * lg(1.5))
    assert concentrated > spread


def test_permutation_ranks_by_hand():
    # Replicates 1, 2, 2, 3 and observed 2: (1 + 3) / 5; each replicate among all four
    # (itself included): 4/5, 3/5, 3/5, 1/5.
    p_obs, p_rep = mc._permutation_ranks(np.array([2.0]), np.array([[1.0], [2.0], [2.0], [3.0]]))
    np.testing.assert_allclose(p_obs, [0.8])
    np.testing.assert_allclose(p_rep[:, 0], [0.8, 0.6, 0.6, 0.2])


def test_min_p_has_its_size_and_the_raw_minimum_does_not():
    # Exchangeable (observed, replicates) of two independent statistics: the combined
    # p-value is uniform, so P(p <= 0.1) = 0.1; the raw minimum of two p-values has
    # 1 - 0.9^2 = 0.19. 2000 trials: binomial sd 0.0067, bounds at 4 sd.
    rng = np.random.default_rng(0)
    trials, r = 2000, 99
    combined, raw = [], []
    for _ in range(trials):
        z = rng.normal(size=(r + 1, 2))
        least, p = mc._min_p(z[0], z[1:])
        combined.append(p <= 0.1)
        raw.append(least <= 0.1)
    sd = math.sqrt(0.1 * 0.9 / trials)
    assert abs(np.mean(combined) - 0.1) < 4 * sd
    assert np.mean(raw) > 0.1 + 4 * sd  # negative control: uncalibrated


def test_p_value_counts_ties_and_is_never_zero():
    assert mc._p_value(2.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(3 / 4)
    assert mc._p_value(9.0, np.array([1.0, 2.0, 3.0])) == pytest.approx(1 / 4)


def test_pooled_cells_by_hand():
    np.testing.assert_array_equal(mc.pooled_cells(np.array([1, 2, 3, 10, 1.0])), [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(mc.pooled_cells(np.array([6, 6, 6.0])), [0, 1, 2])
    np.testing.assert_array_equal(mc.pooled_cells(np.array([1, 1.0])), [0, 0])


def test_difficulty_bins_by_hand():
    u = np.array([9, 1, 5, 1, 10, 3])
    m = np.full(6, 10.0)
    # Order by u/M, ties in image order: images 1, 3, 5, 2, 0, 4 -> bins of 2.
    np.testing.assert_array_equal(mc.difficulty_bins(u, m, 3), [2, 0, 1, 0, 2, 1])


def test_beta_moments_recover_a_beta():
    rng = np.random.default_rng(0)
    t = rng.beta(2.0, 6.0, 200_000)
    u = rng.binomial(10, t)
    a, b = mc._beta_moments(u, np.full(len(u), 10.0))
    assert a / (a + b) == pytest.approx(0.25, abs=0.005)
    assert a + b == pytest.approx(8.0, rel=0.05)
    # No spread beyond binomial noise: the concentration hits its upper bound.
    u = rng.binomial(10, 0.4, 20_000)
    a, b = mc._beta_moments(u, np.full(len(u), 10.0))
    assert a + b >= 100


def test_share_pmf_by_hand():
    # Prior of class 0 (K = 3): weight 0.7 Dirichlet with t = p[0] ~ Beta(1.8, 1.2),
    # 0.1 spike t = 0, 0.2 spike t = 1. P(c) = sum_z w_z E_z[Binom(c; n, A(t))], with
    # A(t)^c (1 - A(t))^(n - c) expanded as a polynomial in t and
    # E[t^j] = prod_{i<j} (a + i) / (a + b + i).
    prior = true_prior(3)
    s = 0.99
    a, b = 3.0 * 0.6, 3.0 * 0.4
    ns = [1, 2, 5]

    def beta_moment(j):
        return math.prod((a + i) / (a + b + i) for i in range(j))

    def want(n, d):
        poly = np.polynomial.Polynomial
        out = []
        for c in range(n + 1):
            q = poly([d, s - d]) ** c * poly([1 - d, -(s - d)]) ** (n - c)
            dirichlet = sum(coef * beta_moment(j) for j, coef in enumerate(q.coef))
            spikes = 0.1 * d**c * (1 - d) ** (n - c) + 0.2 * s**c * (1 - s) ** (n - c)
            out.append(math.comb(n, c) * (0.7 * dirichlet + spikes))
        return np.array(out)

    # One compiled program: the same entries and two draws each time.
    def pmfs(deltas):
        return mc._share_pmfs(
            prior, np.zeros(3, int), np.array(ns), np.array(deltas), np.full(2, s)
        )

    low, high, mixed = pmfs([0.3, 0.3]), pmfs([0.5, 0.5]), pmfs([0.3, 0.5])
    for i, n in enumerate(ns):
        np.testing.assert_allclose(low[i], want(n, 0.3), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(high[i], want(n, 0.5), rtol=2e-5, atol=1e-7)
        # Averaging over draws of delta is the mixture of the pmfs.
        np.testing.assert_allclose(mixed[i], (low[i] + high[i]) / 2, rtol=2e-5, atol=1e-7)


# ----------------------------------------------------------------------------------
# Each check: passes on SPA, fails on its misspecified scenario
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario, passes", [("spa", True), ("uniform", False)])
def test_rejected_classes(scenario, passes):
    b, rho, u = calibration_data(1, 300, scenario)
    check = by_name(model_checks(jax.random.key(2), b, rho, u, deltas=[DELTA], one_stars=ONE_STAR))[
        "rejected_classes"
    ]
    assert check.passed is passes, check
    assert 0 < check.p_value <= 1 and np.isfinite(check.statistic)
    assert check.verdict.endswith(").")


@pytest.mark.parametrize("scenario, passes", [("spa", True), ("difficulty", False)])
def test_acceptance_by_difficulty(scenario, passes):
    # 3000 calibration images: the power against delta_i = 0.1 + 0.5 (1 - p_i[rho]) is
    # below 0.1 with the paper's 100 (see benchmarks/model_checks.py).
    b, rho, u = calibration_data(3, 3000, scenario)
    # delta as a fit with 1* fixed would give it: the moment estimate.
    nb, nu = b.sum(1), u.sum(1)
    acc, share = b[np.arange(len(rho)), rho] / nb, u[np.arange(len(rho)), rho] / nu
    d = (acc.mean() - ONE_STAR * share.mean()) / (1 - share.mean())
    check = by_name(
        model_checks(
            jax.random.key(4), b, rho, u, deltas=d + 0.01 * np.linspace(-1, 1, 8),
            one_stars=ONE_STAR, num_resamples=500,
        )
    )["acceptance_by_difficulty"]  # fmt: skip
    assert check.passed is passes, check
    if not passes:
        assert check.statistic > 0 and "higher on hard images" in check.verdict


def test_acceptance_by_difficulty_ignores_a_level_shift():
    # delta off by 0.05 from the truth moves every image's acceptance the way a change of
    # delta does: the fitted delta absorbs that, and so does the check.
    b, rho, u = calibration_data(5, 3000, "spa")
    check = by_name(
        model_checks(
            jax.random.key(6),
            b,
            rho,
            u,
            deltas=[DELTA + 0.05],
            one_stars=ONE_STAR,
            num_resamples=500,
        )
    )["acceptance_by_difficulty"]
    assert check.passed, check


@pytest.mark.parametrize(
    "delta_fn, passes",
    [(None, True), (lambda t: 0.1 + 0.5 * (1 - t), False), (lambda t: np.full_like(t, 0.5), False)],
    ids=["spa", "difficulty", "wrong_delta"],
)
def test_share_on_proposal(delta_fn, passes):
    prior = true_prior(3)
    b, rho = sample_from_prior(7, prior, 3000, delta_fn=delta_fn)
    check = by_name(
        model_checks(
            jax.random.key(8), b, rho, None, deltas=[DELTA], one_stars=ONE_STAR, prior=prior
        )
    )["share_on_proposal"]
    assert check.passed is passes, check
    assert "3 proposed classes" in check.verdict


# ----------------------------------------------------------------------------------
# Skips, keys, warnings
# ----------------------------------------------------------------------------------


def test_too_little_data_is_skipped_and_passes():
    b, rho, u = calibration_data(9, 19, "uniform")
    checks = model_checks(jax.random.key(0), b, rho, u, deltas=[DELTA], num_resamples=50)
    assert [c.name for c in checks] == list(
        ("rejected_classes", "acceptance_by_difficulty", "share_on_proposal")
    )
    for c in checks:
        assert c.passed and math.isnan(c.p_value) and c.verdict.startswith("Skipped")
    assert "19 calibration images" in checks[0].verdict
    assert "prior" in checks[2].verdict
    checks = model_checks(jax.random.key(0), b, rho, None, deltas=[DELTA], num_resamples=50)
    assert all(c.passed and math.isnan(c.p_value) for c in checks)


def test_same_key_same_result_and_legacy_keys():
    b, rho, u = calibration_data(10, 60, "spa")
    kw = dict(deltas=[0.25, 0.3, 0.35], one_stars=ONE_STAR, num_resamples=200)
    first = model_checks(jax.random.key(11), b, rho, u, **kw)
    assert first == model_checks(jax.random.key(11), b, rho, u, **kw)
    assert first == model_checks(jax.random.key_data(jax.random.key(11)), b, rho, u, **kw)
    assert first != model_checks(jax.random.key(12), b, rho, u, **kw)
    for c in first:
        assert isinstance(c, ModelCheck)
        assert all(isinstance(v, t) for v, t in zip(c, (str, float, float, bool, str)))


def test_warn_failed_names_each_failed_check():
    ok = ModelCheck("share_on_proposal", 1.0, 0.5, True, "Fine.")
    bad = [ModelCheck(n, 9.0, 0.001, False, "Bad.") for n in ("rejected_classes", "x2")]
    with pytest.warns(ModelCheckWarning) as record:
        warn_failed([ok, *bad])
    assert len(record) == 2
    assert "rejected_classes" in str(record[0].message) and "x2" in str(record[1].message)
    assert "rejection='uniform'" in str(record[0].message)  # the variant to try
    assert "compare_models" not in str(record[1].message)  # no remedy for an unknown check
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_failed([ok])


# ----------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------


def _inputs():
    b, rho, u = calibration_data(13, 30, "spa", k=3)
    return dict(counts=b, proposals=rho, unbiased=u)


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda a: a.update(counts=-a["counts"]), "counts"),
        (lambda a: a.update(counts=a["counts"][:, :1]), "counts"),
        (lambda a: a.update(proposals=a["proposals"][:-1]), "proposals"),
        (lambda a: a.update(proposals=a["proposals"] + 3), "proposals"),
        (lambda a: a.update(unbiased=a["unbiased"][:, :2]), "unbiased"),
        (lambda a: a.update(deltas=[]), "deltas"),
        (lambda a: a.update(deltas=[1.5]), "deltas"),
        (lambda a: a.update(one_stars=[0.9, 0.9]), "one_stars"),
        (lambda a: a.update(one_stars=0.2), "one_stars"),
        (lambda a: a.update(alpha=1.5), "alpha"),
        (lambda a: a.update(num_resamples=0), "num_resamples"),
        (lambda a: a.update(num_bins=0), "num_bins"),
        (lambda a: a.update(prior=true_prior(4)), "prior"),
    ],
)
def test_bad_input_names_the_argument(change, name):
    args = dict(_inputs(), deltas=[DELTA], one_stars=ONE_STAR)
    change(args)
    with pytest.raises(ValueError, match=f"`{name}`"):
        model_checks(
            jax.random.key(0), args.pop("counts"), args.pop("proposals"), args.pop("unbiased"),
            **args,
        )  # fmt: skip
