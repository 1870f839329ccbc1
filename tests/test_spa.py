"""SPA engine: closed form, statistical correctness, invariances, corner cases, bad input."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    ALPHA,
    chisquare_pvalue,
    histogram_pvalue,
    poisson_binomial_pmf,
    proportion_ok,
    two_sample_pvalue,
)
from scipy import stats

import cleverjax as cj

# Four image types: generic, p[rho] small, p[rho] = 1, uniform.
ROWS = np.array(
    [
        [0.5, 0.3, 0.2, 0.0],
        [0.1, 0.1, 0.8, 0.0],
        [0.0, 0.0, 0.0, 1.0],
        [0.25, 0.25, 0.25, 0.25],
    ]
)
PROPOSALS = np.array([0, 1, 3, 2])
DELTA, ONE_STAR = 0.3, 0.95
REPEATS, N = 2000, 50


def reference_biased(p, rho, delta, one_star, on_certain="uniform"):
    """Direct NumPy transcription of Algorithm 1's distribution, one row at a time."""
    out = np.zeros_like(p, dtype=float)
    for i, (row, r) in enumerate(zip(p, rho)):
        a = delta + (one_star - delta) * row[r]
        others = row.copy()
        others[r] = 0
        if others.sum() > 0:
            rest = others / others.sum()
        elif on_certain == "uniform":
            rest = np.ones_like(row) / (len(row) - 1)
            rest[r] = 0
        else:
            rest = np.zeros_like(row)
            rest[1 if r == 0 else 0] = 1
        out[i] = (1 - a) * rest
        out[i, r] += a
    return out


def tiled():
    p = jnp.asarray(np.repeat(ROWS, REPEATS, axis=0), jnp.float32)
    rho = jnp.asarray(np.repeat(PROPOSALS, REPEATS), jnp.int32)
    return p, rho


def simulated_counts(method, key, delta=DELTA):
    p, rho = tiled()
    if method == "labels":
        labels = np.asarray(
            cj.simulate_annotations(key, p, rho, num_annotations=N, delta=delta, one_star=ONE_STAR)
        )
        return (labels[:, :, None] == np.arange(4)).sum(axis=1)
    return np.asarray(
        cj.simulate_counts(
            key, p, rho, num_annotations=N, delta=delta, one_star=ONE_STAR, method=method
        )
    )


# --------------------------------------------------------------------------- closed form


def test_biased_distribution_hand_derived():
    # A = 0.2 + 0.7 * 0.5 = 0.55; r = (0, 0.6, 0.4); p_b = (0.55, 0.27, 0.18).
    out = cj.biased_distribution(
        jnp.array([[0.5, 0.3, 0.2]]), jnp.array([0]), delta=0.2, one_star=0.9
    )
    np.testing.assert_allclose(out, [[0.55, 0.27, 0.18]], rtol=1e-6)
    assert out.shape == (1, 3) and out.dtype == jnp.result_type(float)


@pytest.mark.parametrize("on_certain", ["uniform", "lowest"])
def test_biased_distribution_matches_reference(on_certain):
    out = cj.biased_distribution(
        ROWS, PROPOSALS, delta=DELTA, one_star=ONE_STAR, on_certain=on_certain
    )
    np.testing.assert_allclose(
        out, reference_biased(ROWS, PROPOSALS, DELTA, ONE_STAR, on_certain), rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(out.sum(axis=1), 1, rtol=1e-6)


def test_biased_distribution_per_image_delta():
    deltas = np.array([0.0, 0.1, 0.5, 0.9])
    out = cj.biased_distribution(ROWS, PROPOSALS, delta=deltas, one_star=ONE_STAR)
    for i, d in enumerate(deltas):
        np.testing.assert_allclose(
            out[i],
            reference_biased(ROWS[i : i + 1], PROPOSALS[i : i + 1], d, ONE_STAR)[0],
            rtol=1e-6,
            atol=1e-7,
        )


@pytest.mark.parametrize("case", ["certain", "impossible", "two_classes", "delta_is_one_star"])
def test_corner_cases_closed_form(case):
    if case == "certain":  # p[rho] = 1: accepted with 1*, else uniform over the others
        p, rho, d, o = [[0.0, 1.0, 0.0]], [1], 0.2, 0.9
        want = [[0.05, 0.9, 0.05]]
    elif case == "impossible":  # p[rho] = 0: A = delta
        p, rho, d, o = [[0.0, 0.6, 0.4]], [0], 0.2, 0.9
        want = [[0.2, 0.48, 0.32]]
    elif case == "two_classes":
        p, rho, d, o = [[0.3, 0.7]], [0], 0.1, 1.0
        want = [[0.37, 0.63]]
    else:  # delta = 1*: acceptance does not depend on p
        p, rho, d, o = [[0.3, 0.7], [0.9, 0.1]], [0, 0], 0.6, 0.6
        want = [[0.6, 0.4], [0.6, 0.4]]
    out = cj.biased_distribution(p, rho, delta=d, one_star=o)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-7)
    assert not np.isnan(np.asarray(out)).any()


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("method", ["multinomial", "annotations", "labels"])
def test_counts_match_closed_form(method):
    """Pooled class totals per image type follow p_b; c[rho] per image is Binomial(N, A)."""
    counts = simulated_counts(method, jax.random.key(11))
    assert counts.shape == (4 * REPEATS, 4)
    assert (counts.sum(axis=1) == N).all()
    expected = reference_biased(ROWS, PROPOSALS, DELTA, ONE_STAR)
    perturbed = reference_biased(ROWS, PROPOSALS, DELTA + 0.03, ONE_STAR)
    cells = len(ROWS) * 2
    good, bad = [], []
    for t in range(len(ROWS)):
        block = counts[t * REPEATS : (t + 1) * REPEATS]
        totals = block.sum(axis=0)
        good.append(chisquare_pvalue(totals, expected[t]))
        bad.append(chisquare_pvalue(totals, perturbed[t]))
        a = expected[t, PROPOSALS[t]]
        a_bad = perturbed[t, PROPOSALS[t]]
        c_rho = block[:, PROPOSALS[t]]
        good.append(histogram_pvalue(c_rho, stats.binom.pmf(np.arange(N + 1), N, a)))
        bad.append(histogram_pvalue(c_rho, stats.binom.pmf(np.arange(N + 1), N, a_bad)))
    assert min(good) > ALPHA / cells, good
    # Negative control: a delta off by 0.03 is rejected (row 2 has p[rho] = 1, where delta
    # does not matter, so the control is on the family as a whole).
    assert min(bad) < ALPHA / cells, bad


@pytest.mark.parametrize("method", ["multinomial", "annotations"])
def test_uniform_rejection_counts_match_closed_form(method):
    """With ``rejection="uniform"`` a rejection picks each other class with probability
    1 / (K - 1); acceptance is unchanged."""
    p, rho = tiled()
    counts = np.asarray(
        cj.simulate_counts(
            jax.random.key(21),
            p,
            rho,
            num_annotations=N,
            delta=DELTA,
            one_star=ONE_STAR,
            method=method,
            rejection="uniform",
        )
    )
    a = DELTA + (ONE_STAR - DELTA) * ROWS[np.arange(4), PROPOSALS]
    expected = np.where(np.arange(4) == PROPOSALS[:, None], a[:, None], (1 - a[:, None]) / 3)
    spa = reference_biased(ROWS, PROPOSALS, DELTA, ONE_STAR)
    good, bad = [], []
    for t in range(len(ROWS)):
        totals = counts[t * REPEATS : (t + 1) * REPEATS].sum(axis=0)
        good.append(chisquare_pvalue(totals, expected[t]))
        bad.append(chisquare_pvalue(totals, spa[t]))
    assert min(good) > ALPHA / len(ROWS), good
    # Negative control: SPA's proportional rejections (rows 0 and 1 differ from uniform).
    assert max(bad[:2]) < ALPHA / len(ROWS), bad


def test_accepted_share_matches_acceptance_probability():
    p, rho = tiled()
    batch = cj.simulate_annotations(
        jax.random.key(12),
        p,
        rho,
        num_annotations=N,
        delta=DELTA,
        one_star=ONE_STAR,
        return_details=True,
    )
    accepted = np.asarray(batch.accepted).reshape(len(ROWS), -1).sum(axis=1)
    trials = REPEATS * N
    prob = DELTA + (ONE_STAR - DELTA) * ROWS[np.arange(4), PROPOSALS]
    assert proportion_ok(accepted, trials, prob)
    # Accepted annotations carry the proposal; rejected ones never do.
    labels = np.asarray(batch.labels)
    acc = np.asarray(batch.accepted)
    assert (labels[acc] == np.repeat(PROPOSALS, REPEATS)[:, None].repeat(N, 1)[acc]).all()
    assert (labels[~acc] != np.repeat(PROPOSALS, REPEATS)[:, None].repeat(N, 1)[~acc]).all()
    prob_bad = DELTA + 0.02 + (ONE_STAR - DELTA - 0.02) * ROWS[np.arange(4), PROPOSALS]
    assert not proportion_ok(accepted[:2], trials, prob_bad[:2])


def test_count_and_annotation_forms_agree_in_distribution():
    multinomial = simulated_counts("multinomial", jax.random.key(21))
    per_annotation = simulated_counts("labels", jax.random.key(22))
    shifted = simulated_counts("labels", jax.random.key(23), delta=DELTA + 0.05)
    tests = []
    for t in (0, 1, 3):
        sl = slice(t * REPEATS, (t + 1) * REPEATS)
        r = PROPOSALS[t]
        hist = [
            np.bincount(c[sl, r], minlength=N + 1) for c in (multinomial, per_annotation, shifted)
        ]
        tests.append((two_sample_pvalue(hist[0], hist[1]), two_sample_pvalue(hist[0], hist[2])))
        tests.append(
            (
                two_sample_pvalue(multinomial[sl].sum(0), per_annotation[sl].sum(0)),
                two_sample_pvalue(multinomial[sl].sum(0), shifted[sl].sum(0)),
            )
        )
    good, bad = zip(*tests)
    assert min(good) > ALPHA / len(tests), good
    assert min(bad) < ALPHA / len(tests), bad


POOL = np.array([0.0, 0.2, 0.5, 0.8])


def test_heterogeneous_annotators_per_annotation():
    m = len(POOL)
    p = jnp.asarray(np.repeat(ROWS[:1], 4000, axis=0), jnp.float32)
    rho = jnp.zeros(4000, jnp.int32)
    batch = cj.simulate_annotations(
        jax.random.key(31),
        p,
        rho,
        num_annotations=m,
        delta=cj.Annotators(POOL),
        one_star=ONE_STAR,
        return_details=True,
    )
    worker = np.asarray(batch.worker)
    i = np.arange(4000)[:, None]
    assert (worker == (i + np.arange(m)) % m).all()
    acc = np.asarray(batch.accepted)
    share = np.array([acc[worker == w].sum() for w in range(m)])
    trials = np.array([(worker == w).sum() for w in range(m)])
    prob = POOL + (ONE_STAR - POOL) * 0.5
    assert proportion_ok(share, trials, prob)
    assert not proportion_ok(share, trials, np.minimum(prob + 0.04, 1))


def test_heterogeneous_annotators_count_form_is_poisson_binomial():
    m = len(POOL)
    p = jnp.asarray(np.repeat(ROWS[:1], 5000, axis=0), jnp.float32)
    rho = jnp.zeros(5000, jnp.int32)
    counts = np.asarray(
        cj.simulate_counts(
            jax.random.key(32),
            p,
            rho,
            num_annotations=m,
            delta=cj.Annotators(POOL),
            one_star=ONE_STAR,
        )
    )
    assert (counts.sum(axis=1) == m).all()
    pmf = poisson_binomial_pmf(POOL + (ONE_STAR - POOL) * 0.5)
    pmf_bad = poisson_binomial_pmf(
        np.minimum(POOL + 0.1, ONE_STAR) + (ONE_STAR - np.minimum(POOL + 0.1, ONE_STAR)) * 0.5
    )
    assert histogram_pvalue(counts[:, 0], pmf) > ALPHA
    assert histogram_pvalue(counts[:, 0], pmf_bad) < ALPHA


def test_annotators_from_beta():
    pool = cj.Annotators.from_beta(jax.random.key(33), 4000, mean=0.3, concentration=8.0)
    d = np.asarray(pool.delta)
    assert pool.num_annotators == 4000 and ((d >= 0) & (d <= 1)).all()
    # Sample mean of Beta(2.4, 5.6): sd = sqrt(m (1 - m) / (c + 1) / n).
    se = np.sqrt(0.3 * 0.7 / 9 / 4000)
    assert abs(d.mean() - 0.3) < 3.9 * se
    assert abs(d.mean() - 0.33) > 3.9 * se


def test_per_image_delta_counts():
    p = jnp.asarray(np.repeat(ROWS[:1], 6000, axis=0), jnp.float32)
    deltas = jnp.asarray(np.repeat([0.1, 0.6], 3000), jnp.float32)
    counts = np.asarray(
        cj.simulate_counts(
            jax.random.key(34),
            p,
            jnp.zeros(6000, jnp.int32),
            num_annotations=10,
            delta=deltas,
            one_star=ONE_STAR,
        )
    )
    acc = counts[:, 0].reshape(2, -1).sum(axis=1)
    prob = np.array([0.1, 0.6]) + (ONE_STAR - np.array([0.1, 0.6])) * 0.5
    assert proportion_ok(acc, 30000, prob)
    assert not proportion_ok(acc, 30000, prob[::-1])


def test_proposer_accuracy():
    p = cj.sample_ground_truth(jax.random.key(40), "CIFAR10H", num_images=20000)
    rho = np.asarray(cj.propose(jax.random.key(41), p, accuracy=0.8))
    right = (rho == np.asarray(jnp.argmax(p, axis=1))).sum()
    assert proportion_ok(right, 20000, 0.8)
    assert not proportion_ok(right, 20000, 0.78)
    gt = np.asarray(cj.propose(jax.random.key(42), p, accuracy=0.0, mistakes="ground_truth"))
    assert (gt != np.asarray(jnp.argmax(p, axis=1))).all()


# --------------------------------------------------------------------------- invariance


def small_problem():
    p = cj.sample_ground_truth(jax.random.key(50), "Benthic", num_images=300)
    rho = cj.propose(jax.random.key(51), p, accuracy=0.8)
    return p, rho


@pytest.mark.parametrize("method", ["multinomial", "annotations"])
def test_jit_matches_eager(method):
    p, rho = small_problem()

    def f(k):
        return cj.simulate_counts(k, p, rho, num_annotations=20, delta=0.25, method=method)

    key = jax.random.key(52)
    eager = f(key)
    np.testing.assert_array_equal(jax.jit(f)(key), eager)
    assert eager.dtype == jnp.int32 and eager.shape == p.shape


def test_vmap_matches_loop(getkey):
    p, rho = small_problem()
    keys = jax.random.split(getkey(), 3)

    def counts(k):
        return cj.simulate_counts(k, p, rho, num_annotations=15, delta=0.3)

    def labels(k):
        return cj.simulate_annotations(k, p, rho, num_annotations=15, delta=0.3)

    for f in (counts, labels):
        batched = jax.vmap(f)(keys)
        looped = jnp.stack([f(k) for k in keys])
        np.testing.assert_array_equal(batched, looped)


def test_deterministic_for_a_key():
    p, rho = small_problem()
    a = cj.simulate_counts(jax.random.key(7), p, rho, num_annotations=30, delta=0.2)
    b = cj.simulate_counts(jax.random.key(7), p, rho, num_annotations=30, delta=0.2)
    c = cj.simulate_counts(jax.random.key(8), p, rho, num_annotations=30, delta=0.2)
    np.testing.assert_array_equal(a, b)
    assert (np.asarray(a) != np.asarray(c)).any()
    legacy = cj.simulate_counts(jax.random.PRNGKey(7), p, rho, num_annotations=30, delta=0.2)
    np.testing.assert_array_equal(legacy, a)


@pytest.mark.parametrize("block", [1, 7, 64])
def test_block_size_does_not_change_result(block):
    p, rho = small_problem()
    num = jnp.arange(300) % 9
    key = jax.random.key(9)
    ref_c = cj.simulate_counts(key, p, rho, num_annotations=num, delta=0.4)
    ref_l = cj.simulate_annotations(key, p, rho, num_annotations=num, delta=0.4)
    np.testing.assert_array_equal(
        cj.simulate_counts(key, p, rho, num_annotations=num, delta=0.4, block_size=block), ref_c
    )
    np.testing.assert_array_equal(
        cj.simulate_annotations(key, p, rho, num_annotations=num, delta=0.4, block_size=block),
        ref_l,
    )


def test_streamed_counts_equal_annotation_labels():
    p, rho = small_problem()
    num = (jnp.arange(300) * 7) % 301  # up to 300 annotations: several streamed chunks
    key = jax.random.key(10)
    pool = cj.Annotators(jnp.array([0.1, 0.5, 0.3]))
    for delta in (0.35, pool):
        labels = np.asarray(cj.simulate_annotations(key, p, rho, num_annotations=num, delta=delta))
        assert ((labels >= 0).sum(axis=1) == np.asarray(num)).all()
        onehot = (labels[:, :, None] == np.arange(p.shape[1])).sum(axis=1)
        streamed = cj.simulate_counts(
            key, p, rho, num_annotations=num, delta=delta, method="annotations"
        )
        np.testing.assert_array_equal(streamed, onehot)


def test_compiles_once_per_shape():
    from cleverjax import _spa

    p, rho = small_problem()
    cj.simulate_counts(jax.random.key(1), p, rho, num_annotations=5, delta=0.1)
    before = _spa._counts_core._cache_size()
    for seed, d, n in [(2, 0.3, 7), (3, 0.5, 100)]:
        cj.simulate_counts(jax.random.key(seed), p, rho, num_annotations=n, delta=d)
    assert _spa._counts_core._cache_size() == before


def test_sweep_cells_equal_simulate_counts():
    p, rho = small_problem()
    key = jax.random.key(60)
    deltas = jnp.array([0.0, 0.2, 0.6])
    sizes = jnp.array([1, 10, 100])
    sweep = cj.simulate_sweep(key, p, rho, delta=deltas, num_annotations=sizes, num_seeds=2)
    assert sweep.shape == (3, 3, 2, *p.shape) and sweep.dtype == jnp.int32
    for di, si, s in [(0, 0, 0), (1, 2, 1), (2, 1, 0)]:
        cell = cj.simulate_counts(
            jax.random.fold_in(key, s),
            p,
            rho,
            num_annotations=int(sizes[si]),
            delta=float(deltas[di]),
        )
        np.testing.assert_array_equal(sweep[di, si, s], cell)


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import cleverjax as cj
    assert len(jax.devices()) == 3
    p = cj.sample_ground_truth(jax.random.key(50), "Benthic", num_images=1001)
    rho = cj.propose(jax.random.key(51), p, accuracy=0.8)
    num = jnp.arange(1001) % 13
    key = jax.random.key(70)
    pool = cj.Annotators(jnp.array([0.1, 0.5, 0.3]))
    out = {}
    for name, devs in [("one", jax.devices()[:1]), ("all", None)]:
        out[name] = [
            np.asarray(cj.simulate_counts(key, p, rho, num_annotations=num, delta=0.3,
                                          devices=devs)).tolist(),
            np.asarray(cj.simulate_counts(key, p, rho, num_annotations=num, delta=pool,
                                          devices=devs, method="annotations")).tolist(),
            np.asarray(cj.simulate_annotations(key, p, rho, num_annotations=num, delta=0.3,
                                               devices=devs)).tolist(),
        ]
    json.dump(out, sys.stdout)
""")


def test_sharded_equals_unsharded():
    # Three devices split 1001 images unevenly; two layouts compile less than three.
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3", JAX_PLATFORMS="cpu"
    )
    proc = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    for got, want in zip(out["all"], out["one"]):
        np.testing.assert_array_equal(got, want)
    # ... and equal to this process, which has a single device.
    p = cj.sample_ground_truth(jax.random.key(50), "Benthic", num_images=1001)
    rho = cj.propose(jax.random.key(51), p, accuracy=0.8)
    local = cj.simulate_counts(
        jax.random.key(70), p, rho, num_annotations=jnp.arange(1001) % 13, delta=0.3
    )
    np.testing.assert_array_equal(out["all"][0], local)


# --------------------------------------------------------------------------- corner cases


@pytest.mark.parametrize("on_certain,other", [("uniform", None), ("lowest", 1)])
def test_certain_proposal_rejections(on_certain, other):
    p = jnp.asarray(np.repeat([[1.0, 0.0, 0.0, 0.0]], 3000, axis=0), jnp.float32)
    rho = jnp.zeros(3000, jnp.int32)
    counts = np.asarray(
        cj.simulate_counts(
            jax.random.key(80),
            p,
            rho,
            num_annotations=20,
            delta=0.1,
            one_star=0.7,
            on_certain=on_certain,
        )
    )
    assert proportion_ok(counts[:, 0].sum(), 60000, 0.7)
    rejected = counts[:, 1:].sum(axis=0)
    if other is None:
        assert chisquare_pvalue(rejected, [1, 1, 1]) > ALPHA
        assert chisquare_pvalue(rejected, [2, 1, 1]) < ALPHA
    else:
        assert rejected[other - 1] == rejected.sum() > 0


def test_zero_annotations_and_empty_inputs():
    p, rho = small_problem()
    counts = cj.simulate_counts(jax.random.key(1), p, rho, num_annotations=0, delta=0.2)
    assert (np.asarray(counts) == 0).all()
    labels = cj.simulate_annotations(
        jax.random.key(1), p, rho, num_annotations=0, delta=0.2, max_annotations=3
    )
    assert labels.shape == (300, 3) and (np.asarray(labels) == -1).all()
    empty = cj.simulate_counts(
        jax.random.key(1), jnp.zeros((0, 3)), jnp.zeros(0, jnp.int32), num_annotations=5, delta=0.1
    )
    assert empty.shape == (0, 3)


def test_large_counts_no_nan():
    p = jnp.array([[0.999999, 0.000001], [0.5, 0.5], [0.0, 1.0]])
    counts = cj.simulate_counts(
        jax.random.key(3), p, jnp.array([1, 0, 1]), num_annotations=10**7, delta=0.0, one_star=1.0
    )
    np.testing.assert_array_equal(np.asarray(counts).sum(axis=1), 10**7)
    assert int(counts[2, 1]) == 10**7  # p[rho] = 1 and 1* = 1: always accepted


# --------------------------------------------------------------------------- bad input


def good_args():
    return dict(
        p=np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]),
        proposals=np.array([0, 2]),
        num_annotations=5,
        delta=0.1,
        one_star=0.99,
    )


@pytest.mark.parametrize(
    "change,match",
    [
        (dict(p=np.array([[0.5, 0.6, 0.0], [0.2, 0.3, 0.5]])), r"`p` rows must sum to 1.*row 0"),
        (dict(p=np.array([[-0.5, 1.5, 0.0], [0.2, 0.3, 0.5]])), r"`p` must be non-negative"),
        (dict(p=np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]])), r"`p` must be finite"),
        (dict(p=np.array([0.5, 0.5])), r"`p` must have 2 dimension"),
        (dict(p=np.ones((2, 1))), r"`p` must have at least 2 classes"),
        (dict(proposals=np.array([0, 3])), r"`proposals` must be class indices in \[0, 3\); got 3"),
        (dict(proposals=np.array([-1, 0])), r"`proposals` must be class indices"),
        (dict(proposals=np.array([0, 1, 2])), r"`proposals` must have shape \(2\)"),
        (dict(proposals=np.array([0.5, 1.0])), r"`proposals` must hold whole numbers"),
        (dict(delta=1.0), r"`delta` must lie in \[0, 0.99\]; got 1"),
        (dict(delta=-0.1), r"`delta` must lie in"),
        (dict(delta=np.array([0.1, 0.2, 0.3])), r"`delta` must have shape \(2\)"),
        (dict(one_star=1.2), r"`one_star` must lie in \[0, 1\]; got 1.2"),
        (dict(num_annotations=-1), r"`num_annotations` must lie in"),
        (dict(num_annotations=2.5), r"`num_annotations` must hold whole numbers"),
        (dict(num_annotations=np.array([1, 2, 3])), r"`num_annotations` must have shape \(2\)"),
    ],
)
@pytest.mark.parametrize("fn", ["counts", "annotations"])
def test_bad_input_names_the_argument(change, match, fn):
    args = good_args() | change
    f = cj.simulate_counts if fn == "counts" else cj.simulate_annotations
    with pytest.raises(ValueError, match=match):
        f(jax.random.key(0), args.pop("p"), args.pop("proposals"), **args)


def test_bad_options(no_typecheck):
    args = good_args()
    p, rho = args.pop("p"), args.pop("proposals")
    with pytest.raises(ValueError, match="`method` must be one of"):
        cj.simulate_counts(jax.random.key(0), p, rho, method="magic", **args)
    with pytest.raises(ValueError, match="`on_certain` must be one of"):
        cj.simulate_counts(jax.random.key(0), p, rho, on_certain="first", **args)
    with pytest.raises(ValueError, match="`rejection` must be one of"):
        cj.simulate_counts(jax.random.key(0), p, rho, rejection="random", **args)
    with pytest.raises(ValueError, match="single PRNG key.*jax.vmap"):
        cj.simulate_counts(jax.random.split(jax.random.key(0), 2), p, rho, **args)
    with pytest.raises(TypeError, match="`key` must be a PRNG key"):
        cj.simulate_counts(np.array([1.0, 2.0]), p, rho, **args)
    with pytest.raises(ValueError, match="`max_annotations` must be at least"):
        cj.simulate_annotations(jax.random.key(0), p, rho, max_annotations=2, **args)
    with pytest.raises(ValueError, match="Annotators"):
        cj.Annotators(np.array([0.1, 1.5]))
    with pytest.raises(ValueError, match="`accuracy` must lie in"):
        cj.propose(jax.random.key(0), p, accuracy=1.5)


def test_traced_bad_input_raises_at_runtime():
    p = jnp.array([[0.5, 0.6]])

    @jax.jit
    def f(q):
        return cj.biased_distribution(q, jnp.array([0]), delta=0.1)

    with pytest.raises(jax.errors.JaxRuntimeError, match="rows must sum to 1"):
        jax.block_until_ready(f(p))
    # Negative control: the same compiled function accepts a valid row.
    jax.block_until_ready(f(jnp.array([[0.4, 0.6]])))


# --------------------------------------------------------------------------- presets


def test_presets():
    assert len(cj.PRESETS) == 10
    for name, pre in cj.PRESETS.items():
        assert cj.preset(name) is pre
        k = pre.num_classes
        assert pre.class_matrix.shape == (k, k)
        np.testing.assert_allclose(pre.class_matrix.sum(axis=1), 1, rtol=1e-12)
        assert 0 <= pre.delta < 1 and pre.num_images > 0
    assert cj.preset("treeversity1").name == "Treeversity#1"
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose one of Benthic"):
        cj.preset("nope")


def test_sample_ground_truth_follows_class_matrix():
    pre = cj.preset("MiceBone")
    p = np.asarray(cj.sample_ground_truth(jax.random.key(90), pre, num_images=30000))
    assert p.shape == (30000, 3)
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-5)
    soft = np.asarray(
        cj.sample_ground_truth(jax.random.key(91), pre, num_images=100, annotations_per_image=10)
    )
    assert np.allclose(soft * 10, np.round(soft * 10), atol=1e-5)
    # Mean label per drawn class is C[y] exactly; the argmax-conditional mean is close to it.
    best = p.argmax(axis=1)
    for k in range(3):
        assert np.abs(p[best == k].mean(axis=0) - pre.class_matrix[k]).max() < 0.1


@pytest.mark.x64
def test_x64_dtypes_preserved():
    if not jax.config.jax_enable_x64:
        pytest.skip("run with JAX_ENABLE_X64=1")
    p, rho = small_problem()
    assert p.dtype == jnp.float64
    assert cj.biased_distribution(p, rho, delta=0.1).dtype == jnp.float64
    counts = cj.simulate_counts(jax.random.key(0), p, rho, num_annotations=50, delta=0.1)
    assert counts.dtype == jnp.int32 and (np.asarray(counts).sum(axis=1) == 50).all()
    labels = cj.simulate_annotations(jax.random.key(0), p, rho, num_annotations=5, delta=0.1)
    assert labels.dtype == jnp.int32
