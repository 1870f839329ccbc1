"""Releasing compiled programs before a process runs out of memory maps."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cleverjax as cj
from cleverjax import _cache
from cleverjax.bayes import annotators, fitting
from cleverjax.study import run as study_run
from cleverjax.study import run_study
from cleverjax.study.spec import parse_study


def _compiled() -> jax.stages.Wrapped:
    f = jax.jit(lambda x: x * 2 + 1)
    f(jnp.ones(3)).block_until_ready()
    assert f._cache_size() == 1
    return f


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_maps_counts_this_process():
    held, limit = _cache.memory_maps()
    assert 0 < held < limit


def test_release_clears_only_when_crowded(monkeypatch):
    f = _compiled()
    monkeypatch.setattr(_cache, "memory_maps", lambda: (40, 100))
    assert not cj.release_compiled_programs()  # 40 % of the limit: kept
    assert f._cache_size() == 1
    monkeypatch.setattr(_cache, "memory_maps", lambda: (51, 100))
    assert cj.release_compiled_programs()
    assert f._cache_size() == 0
    assert not cj.release_compiled_programs(share=0.6)


def test_release_without_proc_does_nothing(monkeypatch):
    f = _compiled()
    monkeypatch.setattr(_cache, "memory_maps", lambda: None)
    assert not cj.release_compiled_programs()
    assert f._cache_size() == 1


@pytest.mark.parametrize("share", [0, -0.1, 1.5, True, "half", float("nan")])
def test_release_bad_share(share, no_typecheck):
    with pytest.raises(ValueError, match="`share` must be a number in"):
        cj.release_compiled_programs(share)


class _Called(Exception):
    pass


def _stop(*args, **kwargs):
    raise _Called


def test_fit_releases_before_compiling(monkeypatch):
    monkeypatch.setattr(fitting, "release_compiled_programs", _stop)
    counts = np.array([[3, 1], [0, 4]])
    with pytest.raises(_Called):
        cj.fit(jax.random.key(0), counts, np.array([0, 1]), unbiased_counts=counts)


@pytest.mark.filterwarnings("ignore::cleverjax.IdentifiabilityWarning")
def test_fit_annotators_releases_before_compiling(monkeypatch):
    monkeypatch.setattr(annotators, "release_compiled_programs", _stop)
    labels = np.array([[0, 1], [1, 1]])
    table = cj.read_annotations(cj.annotations_to_table(labels, np.array([0, 1])))
    with pytest.raises(_Called):
        cj.fit_annotators(jax.random.key(0), table)


def test_study_releases_before_every_cell(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(study_run, "release_compiled_programs", lambda: calls.append(1))
    study = parse_study(
        {
            "truth": {"preset": "Turkey", "images": 50},
            "deltas": [0.1, 0.3],
            "annotations": [1],
            "seeds": [0],
            "methods": ["SPA"],
            "calibration_images": 10,
        },
        source="tiny",
        base=tmp_path,
    )
    run_study(study, tmp_path / "out")
    assert len(calls) == 2
