"""Exact log-Gamma draws: distribution, the rejection loop, extreme shapes, invariances."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ALPHA, log_gamma_cdf
from scipy import stats

from cleverjax._random import _finish, log_gamma, log_gamma_rows

SHAPES = (1e-3, 0.3, 1.0, 2.5, 50.0, 1e4)
N = 20_000
LEVEL = ALPHA / len(SHAPES)
"""KS rejection level: a test's budget split over the shapes (Bonferroni)."""
WRONG = 1.1
"""Shape factor of the negative controls. At N = 20000 and LEVEL the KS test rejects a
distance of 0.017 or more; a shape 10 % too large moves the cdf by 0.035 as alpha -> 0
(where alpha log G is minus an exponential variable) and by more for larger alpha, while
the distance's sampling error is about 1 / sqrt(N) = 0.007: it is rejected with
probability near 1. A 5 % error (0.018 as alpha -> 0) would not be."""

draw = jax.jit(functools.partial(log_gamma, dtype=jnp.float32), static_argnames="tries")


def ks_pvalue(draws, alpha: float) -> float:
    """Kolmogorov–Smirnov p-value of log-Gamma draws against log G, G ~ Gamma(alpha)."""
    draws = np.asarray(draws, float)
    assert np.isfinite(draws).all()
    return float(stats.kstest(draws, lambda t: log_gamma_cdf(t, alpha)).pvalue)


@pytest.mark.parametrize("tries", [1, 4])
@pytest.mark.parametrize("alpha", SHAPES)
def test_log_gamma_matches_gamma(alpha, tries):
    key = jax.random.key(20)
    full = jnp.full((N,), alpha, jnp.float32)
    assert ks_pvalue(draw(key, full, tries=tries), alpha) > LEVEL
    # Negative controls: a shape 10 % too large, and (below 1) the boost left out, which
    # draws Gamma(alpha + 1).
    assert ks_pvalue(draw(key, full * WRONG, tries=tries), alpha) < LEVEL
    if alpha < 1:
        assert ks_pvalue(draw(key, full + 1, tries=tries), alpha) < LEVEL


@pytest.mark.parametrize("shape", [1.0, 2.5])
def test_loop_alone_is_exact(shape):
    """Every element through the loop, none from the first pass: with a buffer of 4 +
    N // 16 slots that takes at least 16 passes, with elements waiting for later ones."""

    def through_loop(key, boosted):
        d = (boosted - 1 / 3)[None]
        nothing_done = jnp.zeros(d.shape, bool)
        kd = jax.random.key_data(key)[None]
        return _finish(kd, d, jnp.zeros_like(d), nothing_done, 0, 4 + N // 16)[0]

    run = jax.jit(through_loop)
    key = jax.random.key(21)
    full = jnp.full((N,), shape, jnp.float32)
    assert ks_pvalue(run(key, full), shape) > ALPHA
    assert ks_pvalue(run(key, full * WRONG), shape) < ALPHA


def test_log_gamma_extreme_shapes_are_finite():
    alpha = np.resize(np.geomspace(1e-30, 1e30, 61), N)
    out = draw(jax.random.key(22), jnp.asarray(alpha, jnp.float32))
    assert out.shape == (N,) and out.dtype == jnp.float32
    assert np.isfinite(np.asarray(out)).all()
    # Invalid shapes end the loop too: zero is the point mass at 0, the rest NaN.
    bad = np.resize(np.asarray([0.0, -1.0, np.nan, np.inf, 2.0]), N)
    out = np.asarray(draw(jax.random.key(23), jnp.asarray(bad, jnp.float32)))
    assert (out[bad == 0] == -np.inf).all() and np.isfinite(out[bad == 2]).all()
    assert np.isnan(out[(bad < 0) | ~np.isfinite(bad)]).all()


def test_log_gamma_vmap_jit_and_key_contract():
    rng = np.random.default_rng(0)
    alpha = jnp.asarray(np.exp(rng.uniform(np.log(1e-4), np.log(50), (6, 10, 12))), jnp.float32)
    keys = jax.random.split(jax.random.key(24), 6)
    one = jax.jit(log_gamma)
    stacked = np.stack([np.asarray(one(k, a)) for k, a in zip(keys, alpha)])
    batched = jax.jit(jax.vmap(log_gamma))(keys, alpha)
    assert batched.shape == (6, 10, 12) and batched.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(batched), stacked, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(log_gamma(keys[0], alpha[0])), stacked[0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(one(keys[0], alpha[0])), stacked[0])
    # Rows batched in one loop give each row what its key gives alone; a row's draws do
    # not depend on the rows beside it.
    rows = jax.jit(log_gamma_rows)
    np.testing.assert_array_equal(np.asarray(rows(keys, alpha)), stacked)
    np.testing.assert_array_equal(np.asarray(rows(keys[2:4], alpha[2:4])), stacked[2:4])
    legacy = jax.random.key_data(keys[1])
    np.testing.assert_array_equal(np.asarray(one(legacy, alpha[1])), stacked[1])


@pytest.mark.parametrize(
    "alpha,dtype,expected",
    [
        (jax.ShapeDtypeStruct((), jnp.float32), None, ((), jnp.float32)),
        (jax.ShapeDtypeStruct((0, 3), jnp.float32), None, ((0, 3), jnp.float32)),
        (jax.ShapeDtypeStruct((2,), jnp.int32), None, ((2,), jnp.float32)),
        (jax.ShapeDtypeStruct((2, 1), jnp.float16), jnp.float32, ((2, 1), jnp.float32)),
    ],
)
def test_log_gamma_shapes_and_dtypes(alpha, dtype, expected):
    out = jax.eval_shape(functools.partial(log_gamma, dtype=dtype), jax.random.key(26), alpha)
    assert (out.shape, out.dtype) == expected


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(tries=0), ValueError, "tries"),
        (dict(dtype=jnp.int32), TypeError, "dtype"),
    ],
)
def test_log_gamma_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        log_gamma(jax.random.key(0), jnp.ones(3), **kwargs)


def test_log_gamma_rows_needs_a_key_per_row(no_typecheck):
    with pytest.raises(ValueError, match="one key per row"):
        log_gamma_rows(jax.random.split(jax.random.key(0), 2), jnp.ones((3, 4)))


def test_log_gamma_rejects_a_batch_of_keys():
    with pytest.raises(ValueError, match="vmap"):
        log_gamma(jax.random.split(jax.random.key(0), 2), jnp.ones(3))


@pytest.mark.x64
def test_log_gamma_x64_dtype_preserved():
    if not jax.config.jax_enable_x64:
        pytest.skip("run with JAX_ENABLE_X64=1")
    alpha = jnp.asarray([1e-4, 0.5, 3.0, 1e4], jnp.float64)
    assert log_gamma(jax.random.key(0), alpha).dtype == jnp.float64
    assert log_gamma(jax.random.key(0), alpha, jnp.float32).dtype == jnp.float32
