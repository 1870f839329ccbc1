"""The main job, ``cleverjax demo``, end to end on a small dataset, and its engine check."""

import jax
import numpy as np
import pytest

import cleverjax as cj
from cleverjax._cli import main
from cleverjax._demo import run_demo, spa_check


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
    assert np.all(table["annotations/s"] > 0)


def test_spa_check_would_catch_a_wrong_delta(ground_truth):
    # Negative control: data simulated at delta = 0.4, compared with delta = 0.3's expectation.
    p, rho = ground_truth
    wrong = spa_check(jax.random.key(2), p, rho, deltas=(0.4,), annotations=(20,))
    expected_at_03 = spa_check(jax.random.key(2), p, rho, deltas=(0.3,), annotations=(20,))
    z = (wrong["measured"] - expected_at_03["expected"]) / wrong["s.e."]
    assert np.all(np.abs(z) > 4)


def test_demo_runs_end_to_end_and_its_repairs_beat_the_biased_labels(tmp_path, capsys):
    plot = tmp_path / "demo.png"
    table = run_demo(preset="Turkey", images=600, plot=str(plot)).set_index("method")
    out = capsys.readouterr().out
    assert "SPA engine" in out and "Bayesian model (posterior mean)" in out
    assert "delta: true 0.300" in out and "total" in out
    assert plot.stat().st_size > 10_000
    kl = table["KL(truth || labels)"]
    assert np.all(np.isfinite(kl)) and np.all(table["seconds"] > 0)
    assert kl["Bayesian model (posterior mean)"] < kl["SPA (raw biased labels)"]
    assert kl["CleverLabel (true delta)"] < kl["SPA (raw biased labels)"]


def test_demo_rejects_a_bad_delta(capsys):
    assert main(["demo", "--delta", "1.5"]) == 2
    assert "`--delta`" in capsys.readouterr().err
