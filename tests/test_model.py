"""Bayesian model: exactness of the collapsed likelihood, recovery, SVI against the exact
path, identifiability, predictive checks, annotators, planning and bad input."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import cleverjax as cj
from cleverjax import _inference, _model

# Short fits in these tests may stop at max_steps; convergence is asserted where it matters.
pytestmark = pytest.mark.filterwarnings("ignore::cleverjax.ConvergenceWarning")

# ----------------------------------------------------------------------------------
# Exactness of the collapsed likelihood (against numerical integration over p)
# ----------------------------------------------------------------------------------

ALPHA = np.array([1.5, 2.0, 0.7])
COUNTS, UNBIASED, RHO = np.array([2, 5, 1]), np.array([1, 2, 0]), 1
DELTA, OMEGA = 0.3, 0.9


def _multinomial_pmf(x, probs):
    from scipy.special import gammaln, xlogy

    x = np.asarray(x, float)
    return np.exp(gammaln(x.sum() + 1) - gammaln(x + 1).sum() + xlogy(x, probs).sum())


def _likelihood(p):
    t = p[RHO]
    a = DELTA + (OMEGA - DELTA) * t
    rest = np.where(np.arange(3) == RHO, 0.0, p) / (1 - t)
    p_b = (1 - a) * rest
    p_b[RHO] = a
    return _multinomial_pmf(COUNTS, p_b) * _multinomial_pmf(UNBIASED, p)


def _brute_force(weight_fn):
    def integrand(y, x):
        p = np.array([x, y, 1 - x - y])
        if p.min() <= 0:
            return 0.0
        return weight_fn(p) * _likelihood(p) * stats.dirichlet.pdf(p, ALPHA)

    return integrate.dblquad(integrand, 0, 1, 0, lambda x: 1 - x, epsabs=1e-14)[0]


def _one_row(kind):
    data, _ = _model.compress(np.array([RHO]), COUNTS[None], UNBIASED[None], np.array([False]))
    prior = cj.Prior(
        jnp.tile(jnp.asarray(ALPHA / ALPHA.sum())[None, None], (4, 1, 1)),
        jnp.full((4, 1), ALPHA.sum()),
        jnp.ones((4, 1)),
        (kind,),
    )
    log_w = _model.log_weights_counts(
        data.table.c, data.table.n, jnp.asarray(DELTA), jnp.asarray(OMEGA), 9
    )
    return data, prior, log_w


def test_collapsed_likelihood_and_posterior_mean_are_exact():
    data, prior, log_w = _one_row(0)
    evidence = _brute_force(lambda p: 1.0)
    np.testing.assert_allclose(
        _model.log_likelihood(data, prior, log_w)[0], np.log(evidence), rtol=1e-5
    )
    mean = [_brute_force(lambda p, k=k: p[k]) / evidence for k in range(3)]
    np.testing.assert_allclose(_model.posterior_moments(data, prior, log_w)[0], mean, rtol=1e-4)


def test_spike_components_are_exact():
    # Spike at p[rho] = 0 is impossible here (an unbiased vote for rho exists)...
    data, prior, log_w = _one_row(1)
    assert np.isneginf(float(_model.log_likelihood(data, prior, log_w)[0]))
    # ... and a spike at p[rho] = 0 without such votes integrates r only: p = (r0, 0, r2).
    data0, _ = _model.compress(
        np.array([RHO]), COUNTS[None], np.zeros((1, 3), int), np.array([False])
    )
    log_w0 = _model.log_weights_counts(
        data0.table.c, data0.table.n, jnp.asarray(DELTA), jnp.asarray(OMEGA), 9
    )
    a, b = ALPHA[0], ALPHA[2]

    def integrand(x):  # p = (x, 0, 1 - x), rejections pick among classes 0 and 2.
        p_b = np.array([(1 - DELTA) * x, DELTA, (1 - DELTA) * (1 - x)])
        return _multinomial_pmf(COUNTS, p_b) * stats.beta.pdf(x, a, b)

    want = integrate.quad(integrand, 0, 1, epsabs=1e-14)[0]
    np.testing.assert_allclose(
        _model.log_likelihood(data0, prior, log_w0)[0], np.log(want), rtol=1e-5
    )


def test_annotator_polynomial_equals_count_polynomial_for_equal_deltas():
    worker = jnp.array([[0, 1, 0, 1, 0, 1, 0, 1, -1]])
    accepted = jnp.array([[True, True, False, False, True, True, True, False, False]])
    by_annotation = _model.log_weights_annotators(
        worker, accepted, jnp.array([0.3, 0.3]), jnp.asarray(0.9), 12
    )
    by_count = _model.log_weights_counts(
        jnp.array([5]), jnp.array([8]), jnp.asarray(0.3), jnp.asarray(0.9), 12
    )
    np.testing.assert_allclose(by_annotation, by_count, rtol=1e-5)


def test_gradients_are_finite_at_the_boundaries():
    def loss(d):
        log_w = _model.log_weights_counts(
            jnp.array([0, 3, 10]), jnp.array([10, 10, 10]), d, jnp.asarray(1.0), 12
        )
        return jnp.sum(jnp.where(jnp.isfinite(log_w), log_w, 0.0))

    assert np.isfinite(np.asarray(jax.grad(loss)(jnp.asarray(0.2)))).all()


# ----------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------


def campaign(seed, *, n=1500, delta=0.3, num_annotations=10, calibration=150, preset="Turkey"):
    key = jax.random.key(seed)
    k_truth, k_prop, k_sim, k_cal = jax.random.split(key, 4)
    p = cj.sample_ground_truth(k_truth, preset, num_images=n, annotations_per_image=20)
    rho = cj.propose(k_prop, p, accuracy=0.85)
    biased = cj.simulate_counts(k_sim, p, rho, num_annotations=num_annotations, delta=delta)
    unbiased = jnp.zeros_like(biased)
    if calibration:
        cal = cj.calibration_sample(k_cal, p, num_images=calibration, num_annotations=10)
        unbiased = unbiased.at[cal.indices].set(cal.counts)
    return p, rho, biased, unbiased


@pytest.fixture(scope="module")
def fitted():
    p, rho, biased, unbiased = campaign(1)
    res = cj.fit(
        jax.random.key(2),
        biased,
        rho,
        unbiased_counts=unbiased,
        delta_from="all",
        num_ppc_replicates=30,
    )
    return p, rho, biased, unbiased, res


def test_fit_recovers_delta_within_its_posterior_spread(fitted):
    p, rho, biased, unbiased, res = fitted
    sd = float(np.std(np.asarray(res.delta_samples)))
    assert res.converged and res.identified
    assert 0 < res.step_seconds * res.losses.shape[0] < res.seconds
    assert abs(res.delta - 0.3) <= 3.9 * sd
    assert res.delta_interval[0] < res.delta < res.delta_interval[1]
    assert abs(res.delta - 0.4) > 3.9 * sd  # negative control: a wrong delta is excluded


def test_fit_result_shapes_and_label_quality(fitted):
    p, rho, biased, unbiased, res = fitted
    n, k = p.shape
    for name in ("posterior_mean", "lower", "upper"):
        assert getattr(res, name).shape == (n, k)
    np.testing.assert_allclose(res.posterior_mean.sum(axis=1), 1, rtol=1e-5)
    lower, upper = np.asarray(res.lower), np.asarray(res.upper)
    assert (0 <= lower).all() and (lower <= upper).all() and (upper <= 1).all()
    # (A posterior with a spike can put its mean outside an equal-tailed interval, so the
    # check is on the truth.) Loose: the truth is not drawn from the model's prior family.
    coverage = np.mean((lower <= np.asarray(p)) & (np.asarray(p) <= upper))
    assert coverage > 0.8, coverage
    matrix = cj.estimate_class_matrix(unbiased[np.asarray(unbiased).sum(axis=1) > 0])
    clever = cj.cleverlabel(biased, rho, matrix)
    assert float(cj.kl_divergence(p, res.posterior_mean)) < float(cj.kl_divergence(p, clever))
    # No label switching: the proposals anchor the classes.
    agree = np.mean(np.argmax(res.posterior_mean, axis=1) == np.argmax(p, axis=1))
    assert agree > 0.9


def test_svi_agrees_with_the_exact_collapsed_posterior(fitted):
    p, rho, biased, unbiased, res = fitted
    exact = cj.exact_delta_posterior(
        biased, rho, unbiased_counts=unbiased, prior=res.prior, delta_from="all"
    )
    sd = float(np.std(np.asarray(res.delta_samples)))
    assert abs(res.delta - exact.mean) <= 0.01
    assert abs(res.delta - exact.mean) <= 0.5 * sd
    np.testing.assert_allclose(res.delta_interval, exact.interval, atol=sd)
    np.testing.assert_allclose(float(jnp.sum(exact.weights)), 1, rtol=1e-5)


def test_posterior_predictive_check(fitted):
    p, rho, biased, unbiased, res = fitted
    ppc = res.ppc
    assert ppc.replicated.shape == (30,) and ppc.replicated_by_class.shape == (30, 3)
    assert ppc.p_value > 1e-3
    # Negative control: a fit whose 1* is far too low cannot reproduce the acceptance rate.
    wrong = cj.fit(
        jax.random.key(3),
        biased,
        rho,
        unbiased_counts=unbiased,
        one_star=0.6,
        delta_from="all",
        num_ppc_replicates=30,
        max_steps=1500,
    )
    assert wrong.ppc.p_value < 1e-3


def test_cut_posterior_uses_only_calibration_images():
    p, rho, biased, unbiased = campaign(4)
    res = cj.fit(
        jax.random.key(5),
        biased,
        rho,
        unbiased_counts=unbiased,
        delta_from="calibration",
        num_ppc_replicates=0,
    )
    exact = cj.exact_delta_posterior(
        biased, rho, unbiased_counts=unbiased, prior=res.prior, delta_from="calibration"
    )
    assert abs(res.delta - exact.mean) <= 0.01
    assert res.delta_interval[0] <= 0.3 <= res.delta_interval[1]


def test_unidentified_delta_warns_and_reports_a_wide_interval():
    p, rho, biased, _ = campaign(6, calibration=0)
    with pytest.warns(cj.IdentifiabilityWarning, match="not identified"):
        res = cj.fit(jax.random.key(7), biased, rho, num_ppc_replicates=0, max_steps=1000)
    assert not res.identified
    lo, hi = res.delta_interval
    assert hi - lo > 0.5


def test_probes_identify_delta():
    p, rho, biased, _ = campaign(8, calibration=0, n=2000)
    k = p.shape[1]
    probe = np.zeros(p.shape[0], bool)
    probe[:300] = True
    rho = rho.at[:300].set(jax.random.randint(jax.random.key(9), (300,), 0, k))
    biased = biased.at[:300].set(
        cj.simulate_counts(jax.random.key(10), p[:300], rho[:300], num_annotations=10, delta=0.3)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", cj.IdentifiabilityWarning)
        res = cj.fit(
            jax.random.key(11),
            biased,
            rho,
            probe=probe,
            delta_from="calibration",
            num_ppc_replicates=0,
        )
    assert res.identified
    assert res.delta_interval[0] <= 0.3 <= res.delta_interval[1]
    assert res.delta_interval[1] - res.delta_interval[0] < 0.3


def test_nuts_on_a_small_problem_matches_svi():
    p, rho, biased, unbiased = campaign(12, n=300, calibration=100)
    svi = cj.fit(
        jax.random.key(13),
        biased,
        rho,
        unbiased_counts=unbiased,
        delta_from="all",
        num_ppc_replicates=0,
    )
    nuts = cj.fit(
        jax.random.key(13),
        biased,
        rho,
        unbiased_counts=unbiased,
        delta_from="all",
        method="nuts",
        num_samples=150,
        num_ppc_replicates=0,
    )
    sd = float(np.std(np.asarray(nuts.delta_samples)))
    assert nuts.method == "nuts"
    assert abs(svi.delta - nuts.delta) <= max(0.5 * sd, 0.005)


def test_fit_annotators_recovers_each_annotator():
    p = cj.sample_ground_truth(
        jax.random.key(20), "Turkey", num_images=800, annotations_per_image=20
    )
    rho = cj.propose(jax.random.key(21), p, accuracy=0.8)
    truth = np.array([0.05, 0.5])
    # Four annotators (each sees every image once), two of each kind.
    batch = cj.simulate_annotations(
        jax.random.key(22),
        p,
        rho,
        num_annotations=4,
        delta=cj.Annotators(np.tile(truth, 2)),
        return_details=True,
    )
    table_biased = cj.annotations_to_table(
        np.asarray(batch.labels), np.asarray(rho), workers=np.asarray(batch.worker)
    )
    cal = cj.calibration_sample(jax.random.key(23), p, num_images=200, num_annotations=5)
    unbiased = np.zeros(p.shape, int)
    unbiased[np.asarray(cal.indices)] = np.asarray(cal.counts)
    table_unbiased = cj.counts_to_table(unbiased, worker_prefix="u")
    import pandas as pd

    table = cj.read_annotations(pd.concat([table_biased, table_unbiased], ignore_index=True))
    res = cj.fit_annotators(jax.random.key(24), table, max_steps=3000)
    order = [res.workers.index(w) for w in ("w0", "w1")]
    est = np.asarray(res.annotator_delta)[order]
    lo, hi = np.asarray(res.annotator_interval)[order].T
    assert (lo <= truth).all() and (truth <= hi).all()
    assert est[1] - est[0] > 0.25  # the two annotators are told apart
    assert res.posterior_mean.shape == (800, 3)


def test_plan_calibration_more_images_narrow_the_interval():
    p = cj.sample_ground_truth(
        jax.random.key(30), "Turkey", num_images=1500, annotations_per_image=20
    )
    plan = cj.plan_calibration(
        jax.random.key(31), p, delta=0.3, target=0.08, sizes=(20, 300), replicates=3
    )
    widths = plan.table["median_half_width"].to_numpy()
    assert widths[1] < widths[0]
    assert plan.recommended in (20, 300, None)
    if plan.recommended is not None:
        row = plan.table[plan.table["calibration_images"] == plan.recommended]
        assert float(row["q90_half_width"].iloc[0]) <= 0.08


def test_divergence_raises_instead_of_returning_nan():
    p, rho, biased, unbiased = campaign(40, n=200, calibration=50)
    prep = _inference._prepare(biased, rho, unbiased, None)
    bad = prep.data._replace(weight=prep.data.weight.at[0].set(jnp.nan))
    config = _model.ModelConfig(num_classes=3, num_components=1, num_terms=11)
    with pytest.raises(FloatingPointError, match="SVI diverged"):
        _inference._run_svi(
            jax.random.key(0),
            bad,
            config,
            _inference._initial_prior(prep, config),
            learning_rate=0.1,
            decay_steps=100,
            max_steps=500,
            check_every=50,
            tolerance=1e-4,
            progress=False,
        )


SHARDED_FIT = textwrap.dedent("""
    import json, sys, warnings
    import jax, jax.numpy as jnp, numpy as np
    import cleverjax as cj
    assert len(jax.devices()) == 4
    p = cj.sample_ground_truth(jax.random.key(1), "Turkey", num_images=400,
                               annotations_per_image=20)
    rho = cj.propose(jax.random.key(2), p, accuracy=0.85)
    b = cj.simulate_counts(jax.random.key(3), p, rho, num_annotations=10, delta=0.3)
    cal = cj.calibration_sample(jax.random.key(4), p, num_images=100)
    u = jnp.zeros_like(b).at[cal.indices].set(cal.counts)
    out = {}
    for name, devs in [("one", jax.devices()[:1]), ("all", jax.devices())]:
        r = cj.fit(jax.random.key(5), b, rho, unbiased_counts=u, delta_from="all",
                   num_ppc_replicates=0, devices=devs, max_steps=500,
                   num_interval_draws=20)
        out[name] = [r.delta, np.asarray(r.posterior_mean).tolist()]
    json.dump(out, sys.stdout)
""")


def test_data_parallel_fit_matches_single_device():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SHARDED_FIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert abs(out["one"][0] - out["all"][0]) < 1e-3
    np.testing.assert_allclose(out["one"][1], out["all"][1], atol=1e-3)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(counts=[[1, -1]], proposals=[0]), r"`counts` must be non-negative"),
        (dict(counts=[[1.5, 1]], proposals=[0]), r"`counts` must hold whole numbers"),
        (dict(counts=[[1, 1]], proposals=[0, 1]), r"`proposals` must have shape \(1\)"),
        (dict(counts=[[1, 1], [0, 0]], proposals=[0, 1]), r"at least one annotation.*index 1"),
        (
            dict(counts=[[1, 1]], proposals=[0], unbiased_counts=[[1, 1, 1]]),
            r"`unbiased_counts` must have shape \(1, 2\)",
        ),
        (
            dict(counts=[[1, 1]], proposals=[0], delta_prior=(0.0, 1.0)),
            r"`delta_prior` must be two",
        ),
        (dict(counts=[[1, 1]], proposals=[0], one_star=1.5), r"`one_star` must lie in"),
        (dict(counts=[[1, 1]], proposals=[0], level=1.5), r"`level` must lie in"),
        (dict(counts=[[1, 1]], proposals=[0], probe=[True, False]), r"`probe` must have shape"),
    ],
)
def test_fit_bad_input(kwargs, match):
    counts = kwargs.pop("counts")
    proposals = kwargs.pop("proposals")
    with pytest.raises(ValueError, match=match):
        cj.fit(jax.random.key(0), counts, proposals, **kwargs)


@pytest.mark.x64
def test_fit_in_float64():
    if not jax.config.jax_enable_x64:
        pytest.skip("run with JAX_ENABLE_X64=1")
    p, rho, biased, unbiased = campaign(50, n=300, calibration=60)
    res = cj.fit(
        jax.random.key(0),
        biased,
        rho,
        unbiased_counts=unbiased,
        num_ppc_replicates=0,
        max_steps=500,
    )
    assert res.posterior_mean.dtype == jnp.float64


def test_uncollapsed_model_log_density_matches_its_formula():
    from numpyro.infer.util import log_density

    counts = jnp.array([[2, 5, 1], [0, 3, 3]])
    proposals = jnp.array([1, 2])
    mean = jnp.full((3, 3), 1 / 3)
    concentration = jnp.array([2.0, 3.0, 4.0])
    p = jnp.array([[0.2, 0.5, 0.3], [0.1, 0.6, 0.3]])
    kwargs = dict(mean=mean, concentration=concentration, one_star=0.9)
    got, _ = log_density(
        cj.spa_model_uncollapsed, (counts, proposals), kwargs, {"delta": jnp.asarray(0.3), "p": p}
    )
    p_b = np.asarray(cj.biased_distribution(p, proposals, delta=0.3, one_star=0.9), float)
    want = stats.beta.logpdf(0.3, 1, 1)
    for i in range(2):
        alpha = np.asarray(concentration)[int(proposals[i])] / 3 * np.ones(3)
        x = np.asarray(p[i], float)
        want += stats.dirichlet.logpdf(x / x.sum(), alpha)
        want += np.log(_multinomial_pmf(np.asarray(counts[i]), p_b[i]))
    np.testing.assert_allclose(float(got), want, rtol=1e-4)


def test_subsampled_svi_runs_and_agrees():
    p, rho, biased, unbiased = campaign(60, n=800, calibration=150)
    full = cj.fit(jax.random.key(61), biased, rho, unbiased_counts=unbiased, num_ppc_replicates=0)
    sub = cj.fit(
        jax.random.key(61),
        biased,
        rho,
        unbiased_counts=unbiased,
        num_ppc_replicates=0,
        subsample_size=64,
        max_steps=1500,
    )
    sd = float(np.std(np.asarray(full.delta_samples)))
    assert abs(sub.delta - full.delta) <= sd


def test_compress_merges_identical_images_and_loses_none():
    rng = np.random.default_rng(0)
    n, k = 5000, 4
    counts = rng.integers(0, 3, (n, k))
    unbiased = np.where(rng.random((n, 1)) < 0.05, rng.integers(0, 2, (n, k)), 0)
    rho = rng.integers(0, k, n)
    probe = rng.random(n) < 0.02
    data, image_row = _model.compress(rho, counts, unbiased, probe)
    assert data.num_rows < n  # identical images were merged
    for field, original in [
        (data.counts, counts),
        (data.unbiased, unbiased),
        (data.proposals, rho),
        (data.probe, probe),
    ]:
        np.testing.assert_array_equal(np.asarray(field)[image_row], original)
    weight = np.bincount(image_row, minlength=data.num_rows)
    np.testing.assert_array_equal(np.asarray(data.weight), weight)
    table, entry = data.table, np.asarray(data.entry)
    rows = np.arange(data.num_rows)
    c = np.asarray(data.counts)[rows, np.asarray(data.proposals)]
    np.testing.assert_array_equal(np.asarray(table.c)[entry], c)
    np.testing.assert_array_equal(np.asarray(table.n)[entry], np.asarray(data.counts).sum(1))
    pair = np.asarray(table.pair)
    np.testing.assert_array_equal(np.asarray(table.pair_c)[pair], np.asarray(table.c))
    np.testing.assert_array_equal(np.asarray(table.pair_n)[pair], np.asarray(table.n))
