"""CleverLabel: hand-computed cases, identities, calibration, delta estimation, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special

import cleverjax as cj

C3 = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.0, 0.3, 0.7]])


def reference_bc(counts, rho, delta, one_star):
    """Direct transcription of the reference implementation's offset correction."""
    out = []
    for c, r in zip(np.asarray(counts, float), rho):
        n = c.sum()
        if n == 0:
            out.append(np.full(len(c), 1 / len(c)))
            continue
        b = min(1, max(0, (c[r] / n - delta) / (one_star - delta)))
        est = c / max(1, n - c[r]) * (1 - b)
        est[r] = b
        out.append(est)
    return np.array(out)


@pytest.mark.parametrize(
    "counts,rho,delta,one_star,want",
    [
        # B = (6/10 - 0.2) / 0.8 = 0.5; others share 0.5 as 3:1.
        ([6, 3, 1], 0, 0.2, 1.0, [0.5, 0.375, 0.125]),
        # All annotations on the proposal: B clamps at 1.
        ([10, 0, 0], 0, 0.1, 0.99, [1.0, 0.0, 0.0]),
        # Acceptance below delta: B clamps at 0; the rest is the plain share of the others.
        ([1, 5, 4], 0, 0.2, 0.99, [0.0, 5 / 9, 4 / 9]),
        # No annotation on the proposal.
        ([0, 2, 8], 0, 0.1, 0.99, [0.0, 0.2, 0.8]),
        # One annotation, accepted.
        ([0, 1, 0], 1, 0.1, 0.99, [0.0, 1.0, 0.0]),
    ],
)
def test_bias_correction_hand_computed(counts, rho, delta, one_star, want):
    out = cj.bias_correction(jnp.array([counts]), jnp.array([rho]), delta=delta, one_star=one_star)
    np.testing.assert_allclose(out[0], want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)


def test_bias_correction_matches_reference_on_random_counts():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 8, size=(500, 5))
    counts[:20] = 0  # images without annotations
    rho = rng.integers(0, 5, size=500)
    out = cj.bias_correction(counts, rho, delta=0.25, one_star=0.95)
    np.testing.assert_allclose(out, reference_bc(counts, rho, 0.25, 0.95), rtol=1e-6, atol=1e-7)
    assert not np.isnan(np.asarray(out)).any()


def test_bias_correction_is_identity_without_bias():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 6, size=(200, 4))
    counts[counts.sum(axis=1) == 0, 0] = 1
    rho = rng.integers(0, 4, size=200)
    out = cj.bias_correction(counts, rho, delta=0.0, one_star=1.0)
    np.testing.assert_allclose(out, counts / counts.sum(axis=1, keepdims=True), rtol=1e-6)


def test_zero_annotations_documented_results():
    counts = jnp.zeros((2, 3), jnp.int32)
    rho = jnp.array([0, 2])
    np.testing.assert_allclose(cj.bias_correction(counts, rho), np.full((2, 3), 1 / 3))
    np.testing.assert_allclose(cj.soft_labels(counts), np.full((2, 3), 1 / 3))
    # CleverLabel without any annotation: the class-blending row of the proposal.
    np.testing.assert_allclose(cj.cleverlabel(counts, rho, C3), C3[[0, 2]], rtol=1e-6)


def test_class_blending_hand_computed():
    est = jnp.array([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])  # argmax 1; tie -> lowest index 0
    out = cj.class_blending(est, C3, mu=0.6)
    want = 0.6 * np.asarray(est) + 0.4 * C3[[1, 0]]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(cj.class_blending(est, C3, mu=1.0), est, rtol=1e-6)
    np.testing.assert_allclose(cj.class_blending(est, C3, mu=0.0), C3[[1, 0]], rtol=1e-6)


def test_cleverlabel_is_bc_then_cb():
    rng = np.random.default_rng(2)
    counts = rng.integers(0, 10, size=(300, 3))
    counts[counts.sum(axis=1) == 0, 1] = 2
    rho = rng.integers(0, 3, size=300)
    bc = cj.bias_correction(counts, rho, delta=0.15, one_star=0.98)
    want = cj.class_blending(bc, C3, mu=0.7)
    got = cj.cleverlabel(counts, rho, C3, delta=0.15, one_star=0.98, mu=0.7)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cleverlabel_with_initial_labels_hand_computed():
    # N' = 4 biased (3 on the proposal 0), n0 = 2 initial labels (1, 1).
    counts, rho, initial = [[3, 1, 0]], [0], [[0, 1, 1]]
    b = (3 / 4 - 0.1) / (0.99 - 0.1)
    est = np.array([b, (1 - b), 0.0])
    data = 4 / 6 * est + 2 / 6 * np.array([0, 0.5, 0.5])
    want = 0.75 * data + 0.25 * C3[0]
    got = cj.cleverlabel(counts, rho, C3, initial=initial)
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    # Only initial labels: CB uses the proposal's row.
    got = cj.cleverlabel([[0, 0, 0]], [2], C3, initial=[[0, 2, 0]])
    np.testing.assert_allclose(got[0], 0.75 * np.array([0, 1, 0]) + 0.25 * C3[2], rtol=1e-6)


@pytest.mark.filterwarnings("ignore::cleverjax.EmptyRowsWarning")
def test_estimate_class_matrix_and_fallbacks():
    counts = np.array([[9, 1, 0], [7, 3, 0], [2, 8, 0], [0, 0, 0]])
    ident = cj.estimate_class_matrix(counts)
    np.testing.assert_allclose(ident, [[0.8, 0.2, 0.0], [0.2, 0.8, 0.0], [0, 0, 1]], atol=1e-6)
    uni = cj.estimate_class_matrix(counts, fallback="uniform")
    np.testing.assert_allclose(uni[2], [1 / 3] * 3, rtol=1e-6)
    pooled = cj.estimate_class_matrix(counts, fallback="pooled")
    np.testing.assert_allclose(pooled[2], [0.6, 0.4, 0.0], rtol=1e-6)
    soft = cj.estimate_class_matrix(np.array([[0.9, 0.1, 0.0], [0.7, 0.3, 0.0]]))
    np.testing.assert_allclose(soft[0], [0.8, 0.2, 0.0], rtol=1e-6)


def test_empty_rows_warn_with_the_count_and_the_images_needed():
    # The case: 100 classes, 100 calibration images, one clear class each.
    rng = np.random.default_rng(0)
    top = rng.integers(0, 100, size=100)
    counts = np.eye(100, dtype=np.int32)[top] * 10
    empty = 100 - len(set(top.tolist()))
    with pytest.warns(cj.EmptyRowsWarning) as record:
        cj.estimate_class_matrix(counts)
    message = str(record[0].message)
    assert f"{empty} of 100 class-blending rows" in message
    need = cj.calibration_images_to_fill(np.bincount(top, minlength=100))
    assert f"about {need} calibration images (not 100)" in message
    # Negative control: every row filled, no warning (warnings are errors here).
    cj.estimate_class_matrix(np.eye(100, dtype=np.int32) * 10)


def test_estimate_class_matrix_under_jit_does_not_warn():
    counts = jnp.array([[9, 1, 0], [2, 8, 0]])
    out = jax.jit(cj.estimate_class_matrix)(counts)
    np.testing.assert_allclose(out[2], [0, 0, 1], atol=1e-6)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_images_to_fill_agrees_with_the_exact_coupon_collector(num_classes):
    """Balanced classes: the estimate M fills every row with probability 0.9 to 0.93 by the
    exact inclusion-exclusion formula (the Poisson approximation errs by a few images on
    the safe side), and 10 % fewer images do not reach 0.9."""

    def exact(m):  # P(no class missed) = sum_j (-1)^j C(K, j) (1 - j/K)^m
        j = np.arange(num_classes)
        log_terms = special.gammaln(num_classes + 1) - special.gammaln(j + 1)
        log_terms += m * np.log1p(-j / num_classes) - special.gammaln(num_classes - j + 1)
        return float(np.sum((-1.0) ** j * np.exp(log_terms)))

    m = cj.calibration_images_to_fill(np.full(num_classes, 1000))
    assert 0.9 <= exact(m) < 0.93
    # Negative control: 10 % fewer images fall short.
    assert exact(int(0.9 * m)) < 0.9


def test_calibration_sample_recovers_class_matrix():
    pre = cj.preset("CIFAR10H")
    p = cj.sample_ground_truth(jax.random.key(3), pre, num_images=5000)
    cal = cj.calibration_sample(jax.random.key(4), p, num_images=2000, num_annotations=50)
    assert len(set(np.asarray(cal.indices).tolist())) == 2000
    assert (np.asarray(cal.counts).sum(axis=1) == 50).all()
    matrix = np.asarray(cj.estimate_class_matrix(cal.counts))
    # The argmax-conditional means of this generator are close to the preset's matrix.
    assert np.abs(matrix - pre.class_matrix).max() < 0.1


def test_estimate_delta_recovers_parameters():
    """Errors within z = 3.9 jackknife standard errors; a wrong delta is rejected."""
    p = cj.sample_ground_truth(jax.random.key(5), "Plankton", num_images=20000)
    rho = cj.propose(jax.random.key(6), p, accuracy=0.6)
    u = cj.sample_annotations(jax.random.key(7), p, num_annotations=10)
    b = cj.simulate_counts(jax.random.key(8), p, rho, num_annotations=10, delta=0.35, one_star=0.95)
    est = cj.estimate_delta(u, b, rho)
    assert est.num_images == 20000
    assert abs(est.delta - 0.35) <= 3.9 * est.delta_se
    assert abs(est.one_star - 0.95) <= 3.9 * est.one_star_se
    assert abs(est.delta - 0.45) > 3.9 * est.delta_se  # negative control
    # Without the attenuation correction the slope is biased towards 0.
    naive = cj.estimate_delta(u, b, rho, correct_attenuation=False)
    assert naive.one_star < est.one_star and naive.delta > est.delta


def test_kl_divergence_against_numpy():
    rng = np.random.default_rng(9)
    gt = rng.dirichlet(np.full(4, 0.3), size=100)
    gt[:10] = np.eye(4)[rng.integers(0, 4, 10)]
    est = rng.dirichlet(np.ones(4), size=100)
    y, x = np.clip(gt, 1e-5, 1 - 1e-5), np.clip(est, 1e-5, 1 - 1e-5)
    want = np.mean(np.sum(y * np.log(y / x), axis=1))
    np.testing.assert_allclose(cj.kl_divergence(gt, est), want, rtol=1e-5)
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.where(gt > 0, gt * np.log(gt / est), 0).sum(axis=1)
    np.testing.assert_allclose(
        cj.kl_divergence(gt, est, exact=True, reduce=False), exact, rtol=1e-5, atol=1e-7
    )
    assert np.isinf(float(cj.kl_divergence([[0.5, 0.5]], [[1.0, 0.0]], exact=True)))
    assert float(cj.kl_divergence(gt, gt, exact=True)) == pytest.approx(0, abs=1e-6)


def test_budget_and_guideline():
    np.testing.assert_allclose(
        cj.budget(
            num_annotations=jnp.array([10, 20]), speedup=2.5, fraction_annotated=0.5, initial=0.1
        ),
        [2.1, 4.1],
    )
    assert cj.annotation_guideline(bias_acceptable=True, speedup=1.0).use_proposals
    g = cj.annotation_guideline(bias_acceptable=False, speedup=2.5)
    assert not g.use_proposals and g.use_class_blending
    assert cj.annotation_guideline(bias_acceptable=False, speedup=10.0).use_cleverlabel
    with pytest.raises(ValueError, match="`speedup` must lie in"):
        cj.budget(num_annotations=1, speedup=0.0)


def test_figure3_grid_on_a_small_preset():
    p = cj.sample_ground_truth(jax.random.key(10), "MiceBone", num_images=400)
    fig = cj.figure3(
        jax.random.key(11), p, deltas=(0.1, 0.5), num_annotations=(1, 5, 50), num_seeds=2
    )
    assert fig.table.shape == (2 * 3 * 2 * 8, 5)
    assert list(fig.medians.columns) == list(cj.FIGURE3_METHODS)
    assert list(fig.ablation.columns) == list(cj.TABLE2_METHODS)
    assert np.isfinite(fig.table["kl"]).all() and (fig.table["kl"] >= 0).all()
    # GT does not depend on delta; CleverLabel with the true delta 0.1 equals CleverLabel.
    t = fig.table.set_index(["method", "delta", "num_annotations", "seed"])["kl"].sort_index()
    np.testing.assert_allclose(t["GT", 0.1], t["GT", 0.5], rtol=1e-6)
    np.testing.assert_allclose(t["CleverLabel", 0.1], t["CleverLabel+GT delta", 0.1], rtol=1e-6)
    assert set(fig.budget["speedup"]) == {1.0, 2.5, 10.0}
    findings = cj.check_findings(fig)
    assert [f.claim for f in findings] == [
        "more annotations help",
        "CB is best at 1 annotation",
        "BC helps from about 20 annotations",
        "the GT delta matters more at large delta and N",
    ]
    # 50 annotations per image beat 1 by far on any data set.
    assert findings[0].holds, findings[0].evidence
    # Negative control: with the rows for N = 1 and N = 50 swapped the finding fails.
    swapped = fig.medians.iloc[::-1].set_axis(fig.medians.index)
    assert not cj.check_findings(fig._replace(medians=swapped))[0].holds


@pytest.mark.slow  # the real-data grid; benchmarks/study_fig3.py runs it too
def test_figure3_on_cifar10h(cifar10h_counts):
    p = cifar10h_counts / cifar10h_counts.sum(axis=1, keepdims=True)
    fig = cj.figure3(jax.random.key(0), p[:2000], num_annotations=(1, 100))
    med = fig.medians
    assert med.loc[100, "CleverLabel"] < med.loc[1, "CleverLabel"]
    assert med.loc[100, "GT"] < med.loc[100, "SPA"]


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cj.bias_correction([[1, -1]], [0]), r"`counts` must be non-negative"),
        (lambda: cj.bias_correction([[1.5, 1]], [0]), r"`counts` must hold whole numbers; got 1.5"),
        (lambda: cj.bias_correction([[1, 1]], [2]), r"`proposals` must be class indices"),
        (lambda: cj.bias_correction([[1, 1]], [0, 1]), r"`proposals` must have shape \(1\)"),
        (lambda: cj.bias_correction([[1, 1]], [0], delta=0.99), r"`delta` must lie in \[0, 0.99\)"),
        (lambda: cj.bias_correction([[1, 1]], [0], one_star=1.5), r"`one_star` must lie in"),
        (lambda: cj.class_blending([[0.5, 0.5]], np.eye(3)), r"`class_matrix` must have shape"),
        (
            lambda: cj.class_blending([[0.5, 0.5]], [[0.5, 0.2], [0, 1]]),
            r"`class_matrix` rows must sum to 1",
        ),
        (lambda: cj.class_blending([[0.5, 0.5]], np.eye(2), mu=1.5), r"`mu` must lie in \[0, 1\]"),
        (lambda: cj.class_blending([[0.5, 0.6]], np.eye(2)), r"`estimate` rows must sum to 1"),
        (
            lambda: cj.cleverlabel([[1, 1]], [0], np.eye(2), initial=[[1, 1, 1]]),
            r"`initial` must have shape \(1, 2\)",
        ),
        (lambda: cj.kl_divergence([[0.5, 0.5]], [[0.5, 0.5, 0]]), r"`estimate` must have shape"),
        (lambda: cj.kl_divergence([[0.5, np.nan]], [[0.5, 0.5]]), r"`gt` must be finite"),
        (lambda: cj.estimate_delta([[1, 1]], [[1, 1]], [0]), r"at least 3 images"),
        (
            # Every image's unbiased share on the proposal is 1/2 (and a fourth image
            # without biased annotations is left out): nothing to regress on.
            lambda: cj.estimate_delta(
                [[2, 2], [1, 1], [3, 3], [4, 0]], [[3, 1], [2, 2], [1, 3], [0, 0]], [0, 0, 0, 0]
            ),
            r"proposal probability varies",
        ),
        (lambda: cj.kl_divergence([[0.5, 0.5]], [[-0.5, 1.5]]), r"`estimate` must be finite"),
        (
            lambda: cj.calibration_sample(jax.random.key(0), np.eye(3), num_images=5),
            r"`num_images` must be an int in \[1, 3\]",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- key handling


def _keyed_results(key, figure3):
    p = cj.sample_ground_truth(key, "Turkey", num_images=60)
    cal = cj.calibration_sample(key, p, num_images=20)
    out = [np.asarray(p), np.asarray(cal.indices), np.asarray(cal.counts)]
    if figure3:  # compiles the whole grid: slow
        fig = cj.figure3(key, p, deltas=(0.3,), num_annotations=(2,), calibration_images=20)
        out.append(fig.table["kl"].to_numpy())
    return out


@pytest.fixture
def rbg_default():
    """Another default PRNG implementation for the duration of a test."""
    before = jax.config.jax_default_prng_impl
    jax.config.update("jax_default_prng_impl", "rbg")
    yield
    jax.config.update("jax_default_prng_impl", before)


@pytest.mark.parametrize("figure3", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_keys_work_under_another_default_prng_implementation(request, figure3):
    threefry = jax.random.key(7, impl="threefry2x32")
    want = _keyed_results(threefry, figure3)
    request.getfixturevalue("rbg_default")
    assert str(jax.random.key_impl(jax.random.key(0))) == "rbg"
    # Negative control: wrapping key data without naming the implementation breaks here.
    with pytest.raises(TypeError):
        jax.random.wrap_key_data(jax.random.key_data(threefry))
    legacy = jax.random.key_data(threefry)  # uint32[2], a legacy Threefry key
    for key in (threefry, legacy):
        for got, expected in zip(_keyed_results(key, figure3), want):
            np.testing.assert_array_equal(got, expected)


def test_as_typed_key_rejects_batches_and_non_keys():
    from cleverjax._random import as_typed_key

    with pytest.raises(ValueError, match="single PRNG key"):
        as_typed_key(jax.random.split(jax.random.key(0), 2))
    with pytest.raises(TypeError, match="uint32"):
        as_typed_key(np.zeros(3, np.float32))
