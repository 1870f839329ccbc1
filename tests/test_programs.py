"""Traced programs stored on disk (cleverjax._programs): found again by a later call
without tracing, the same results as the plain jit path, and a plain fallback where they
cannot be stored."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cleverjax import _programs
from cleverjax.bayes import exact
from cleverjax.bayes.data import entry_pairs, prepare
from cleverjax.bayes.fitting import initial_prior
from cleverjax.bayes.model import ModelConfig

traced = []


@functools.partial(jax.jit, static_argnames=("power",))
def _poly(x, scale, *, power: int):
    traced.append(power)  # runs only while tracing
    return {"value": jnp.sum(scale * x**power), "parts": (x * scale, None)}


@jax.jit
def _refuses(x, scale, *, power: int):
    raise AssertionError("traced, although the stored program should have been read")


@pytest.fixture
def store(tmp_path, monkeypatch):
    folder = tmp_path / _programs.FOLDER
    monkeypatch.setattr(_programs, "program_dir", lambda: folder)
    _programs.forget_programs()
    traced.clear()
    yield folder
    _programs.forget_programs()


def _files(folder):
    return sorted(p.name for p in folder.glob("*.exported")) if folder.exists() else []


def test_stored_program_is_read_back_without_tracing(store):
    x = jnp.arange(4.0)
    first = _programs.stored_call(_poly, x, 2.0, name="poly", power=3)
    assert traced == [3]
    assert len(_files(store)) == 1
    # A new process in effect: nothing in memory, the program read from disk. A function
    # that fails when traced, under the same name, shows that nothing was traced.
    _programs.forget_programs()
    again = _programs.stored_call(_refuses, x, 2.0, name="poly", power=3)
    np.testing.assert_array_equal(again["value"], first["value"])
    np.testing.assert_array_equal(again["parts"][0], first["parts"][0])
    assert again["parts"][1] is None
    assert float(first["value"]) == 2.0 * float(jnp.sum(x**3))


def test_same_results_as_the_plain_jit_path(store):
    x = jax.random.normal(jax.random.key(0), (5, 3))
    plain = _poly(x, 0.5, power=2)
    stored = _programs.stored_call(_poly, x, 0.5, name="poly", power=2)
    assert jax.tree.structure(stored) == jax.tree.structure(plain)
    for a, b in zip(jax.tree.leaves(stored), jax.tree.leaves(plain)):
        np.testing.assert_array_equal(a, b)


def test_new_shapes_statics_and_keys_make_new_programs(store):
    x = jnp.arange(4.0)
    _programs.stored_call(_poly, x, 2.0, name="poly", power=2)
    _programs.stored_call(_poly, x, 3.0, name="poly", power=2)  # same shapes: reused
    assert len(_files(store)) == 1
    _programs.stored_call(_poly, jnp.arange(5.0), 2.0, name="poly", power=2)
    _programs.stored_call(_poly, x, 2.0, name="poly", power=4)
    _programs.stored_call(_poly, x, 2.0, name="poly", key="other settings", power=2)
    _programs.stored_call(_poly, x.astype(jnp.int32), 2, name="poly", power=2)
    assert len(_files(store)) == 5
    assert traced == [2, 2, 4, 2, 2]


def test_unreadable_file_is_exported_again(store):
    x = jnp.arange(3.0)
    want = _programs.stored_call(_poly, x, 1.5, name="poly", power=2)
    (path,) = store.glob("*.exported")
    path.write_bytes(b"not a program")
    _programs.forget_programs()
    got = _programs.stored_call(_poly, x, 1.5, name="poly", power=2)
    np.testing.assert_array_equal(got["value"], want["value"])
    assert traced == [2, 2]
    _programs.forget_programs()
    _programs.stored_call(_refuses, x, 1.5, name="poly", power=2)  # rewritten whole


def test_off_runs_the_plain_jit_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CLEVERJAX_COMPILATION_CACHE", "off")
    assert _programs.program_dir() is None
    out = _programs.stored_call(_poly, jnp.arange(3.0), 1.0, name="poly", power=2)
    assert float(out["value"]) == 5.0
    monkeypatch.setenv("CLEVERJAX_COMPILATION_CACHE", str(tmp_path))
    folder = _programs.program_dir()
    assert folder is None or folder.name == _programs.FOLDER


@pytest.mark.parametrize(
    "where, error",
    [("serialize", ImportError("Please install 'flatbuffers'")), ("export", RuntimeError("no"))],
)
def test_unexportable_program_runs_the_plain_path(store, monkeypatch, where, error):
    from jax import export

    def fail(*args, **kwargs):
        raise error

    if where == "serialize":
        monkeypatch.setattr(export.Exported, "serialize", fail)
    else:
        monkeypatch.setattr(export, "export", fail)
    for _ in range(2):  # the second call goes straight to the plain path
        out = _programs.stored_call(_poly, jnp.arange(3.0), 1.0, name="poly", power=2)
        assert float(out["value"]) == 5.0
    assert _files(store) == []
    assert len(_programs._PLAIN) == 1


def test_a_callers_error_is_raised_as_without_the_store(store):
    with pytest.raises(TypeError, match="incompatible shapes"):
        _programs.stored_call(_poly, jnp.arange(3.0), jnp.ones(2), name="poly", power=2)


def test_fit_program_stored_equals_plain(store):
    """A program of the fit (the exact grid of delta), stored and read back, gives the
    plain path's numbers to the last bit."""
    rng = np.random.default_rng(0)
    counts = rng.multinomial(5, [0.5, 0.3, 0.2], size=40)
    rho = np.zeros(40, np.int32)
    prep = prepare(counts, rho, None, None)
    config = ModelConfig(num_classes=3, num_components=2, num_terms=prep.num_terms)
    prior = initial_prior(prep, config)
    grid = jnp.linspace(0.05, 0.9, 7)
    pairs = entry_pairs(prep.data.table)
    star = jnp.asarray(0.99)
    args = (prep.data, prior, grid, star, pairs)
    plain = exact.log_likelihood_grid(*args, num_terms=prep.num_terms)
    stored = _programs.stored_call(
        exact.log_likelihood_grid, *args, name="grid", num_terms=prep.num_terms
    )
    _programs.forget_programs()
    read = _programs.stored_call(
        exact.log_likelihood_grid, *args, name="grid", num_terms=prep.num_terms
    )
    np.testing.assert_array_equal(np.asarray(stored), np.asarray(plain))
    np.testing.assert_array_equal(np.asarray(read), np.asarray(plain))


def _bowl(params, target, static):
    return jnp.sum((params["x"] - target) ** 2)


def _real(static):
    from numpyro.distributions import constraints

    return {"x": constraints.real}


def test_lbfgs_stores_named_objectives_and_not_closures(store):
    """A module-level objective's chunk program is stored; two closures with one name
    and different captured values are not (their programs differ), and each reaches its
    own minimum."""
    from cleverjax.bayes import optimize

    start = {"x": np.zeros(2, np.float32)}
    args = dict(max_steps=60, scale=1.0, tolerance=1e-8)
    target = jnp.asarray([1.0, -2.0])
    out = optimize.run_lbfgs(_bowl, start, _real, (target,), None, **args)
    np.testing.assert_allclose(out.params["x"], target, atol=1e-3)
    assert [f.split("-")[0] for f in _files(store)] == ["lbfgs_chunk"]

    def shifted(shift):
        def loss(params, target, static):
            return jnp.sum((params["x"] - target - shift) ** 2)

        return loss

    for shift in (0.0, 3.0):
        out = optimize.run_lbfgs(shifted(shift), start, _real, (target,), None, **args)
        np.testing.assert_allclose(out.params["x"], target + shift, atol=1e-3)
    assert len(_files(store)) == 1
