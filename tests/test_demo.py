"""The main job, ``cleverjax demo``, end to end on a small dataset, and its engine check."""

import jax
import numpy as np
import pytest

import cleverjax as cj
from cleverjax import _demo
from cleverjax._cli import main
from cleverjax._demo import engine_speed, run_demo, spa_check


@pytest.fixture(scope="module")
def ground_truth():
    p = cj.sample_ground_truth(jax.random.key(0), "Turkey", num_images=2000)
    return p, cj.propose(jax.random.key(1), p, accuracy=0.9)


def test_spa_check_agrees_with_the_closed_form(ground_truth):
    p, rho = ground_truth
    table = spa_check(jax.random.key(2), p, rho, deltas=(0.1, 0.5), annotations=(1, 20))
    assert len(table) == 4
    z = (table["measured"] - table["expected"]) / table["s.e."]
    # Four normal z-scores: |z| > 4 has probability 2.5e-4 under the model.
    assert np.all(np.abs(z) < 4), table


def test_engine_speed_is_measured_at_the_size_asked_for(ground_truth):
    p, rho = ground_truth
    speed = engine_speed(jax.random.key(3), p, rho, annotations=10**6, repeats=1)
    assert speed.images == 2000 and speed.annotations_per_image == 500
    assert speed.annotations_per_s > 0


def test_spa_check_would_catch_a_wrong_delta(ground_truth):
    # Negative control: data simulated at delta = 0.4, compared with delta = 0.3's expectation.
    p, rho = ground_truth
    wrong = spa_check(jax.random.key(2), p, rho, deltas=(0.4,), annotations=(20,))
    expected_at_03 = spa_check(jax.random.key(2), p, rho, deltas=(0.3,), annotations=(20,))
    z = (wrong["measured"] - expected_at_03["expected"]) / wrong["s.e."]
    assert np.all(np.abs(z) > 4)


@pytest.mark.slow  # the whole demo; `cleverjax demo` is timed in benchmarks/RESULTS.md
def test_demo_runs_end_to_end_and_its_repairs_beat_the_biased_labels(tmp_path, capsys):
    plot = tmp_path / "demo.png"
    table = run_demo(
        preset="Turkey", images=600, plot=str(plot), speed_annotations=10**6
    ).set_index("method")
    out = capsys.readouterr().out
    assert "SPA engine" in out and "Bayesian model (posterior mean)" in out
    assert "annotations/s annotation by annotation (600 images x 1667 annotations" in out
    assert "delta: true 0.300" in out and "total" in out
    assert plot.stat().st_size > 10_000
    kl = table["KL(truth || labels)"]
    assert np.all(np.isfinite(kl)) and np.all(table["seconds"] > 0)
    assert kl["Bayesian model (posterior mean)"] < kl["SPA (raw biased labels)"]
    assert kl["CleverLabel (true delta)"] < kl["SPA (raw biased labels)"]


@pytest.mark.slow  # the whole demo a second time
def test_demo_reports_a_fit_that_did_not_converge(tmp_path, capsys, monkeypatch):
    real_fit = _demo.fit

    def short_fit(*args, **kwargs):
        return real_fit(*args, **kwargs, max_steps=2)

    monkeypatch.setattr(_demo, "fit", short_fit)
    table = run_demo(
        preset="Turkey", images=200, plot=str(tmp_path / "d.png"), speed_annotations=1000
    )
    out = capsys.readouterr().out
    assert "did not converge" in out and "max_steps=" in out
    assert "Bayesian model not shown" in out
    # No number from the unconverged fit: no table row, no delta, no predictive check.
    assert "Bayesian model (posterior mean)" not in out and "predictive check" not in out
    assert "Bayesian" not in " ".join(table["method"])


def test_demo_rejects_a_bad_delta(capsys):
    assert main(["demo", "--delta", "1.5"]) == 2
    assert "`--delta`" in capsys.readouterr().err
