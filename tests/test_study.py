"""Studies: the study file's checks, the table, resuming after a crash, plots."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import cleverjax as cj
from cleverjax._cli import main
from cleverjax.study import COLUMNS, cells, load_study, run_study
from cleverjax.study import run as study_run
from cleverjax.study.grid import fold

TINY = """
truth = { preset = "Turkey", images = 200 }
deltas = [0.1, 0.3]
annotations = [1, 3, 10]
seeds = [0, 1]
methods = ["SPA", "CleverLabel", "CleverLabel+GT delta"]
calibration_images = 100
"""


def _write(folder: Path, text: str, name: str = "study.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _run(argv, capsys):
    code = main(["study", *argv])
    return code, capsys.readouterr()


def _numbers(table: pd.DataFrame) -> pd.DataFrame:
    """The table without wall times, which no two runs share."""
    return table.drop(columns="seconds")


def test_minimal_study_writes_parquet_and_csv(tmp_path, capsys):
    study = _write(tmp_path, TINY)
    code, out = _run(["run", str(study), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, out.err
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert tuple(table.columns) == COLUMNS
    assert len(table) == 2 * 3 * 2 * 3  # deltas x N x seeds x methods
    assert not table.duplicated(["cell", "method"]).any()
    assert table["cell"].nunique() == 2 * 3 * 2
    # Canonical order: cell settings, then method (study order), then seed.
    first = table.iloc[:6]
    assert (
        list(first["method"])
        == ["SPA", "SPA", "CleverLabel", "CleverLabel"] + ["CleverLabel+GT delta"] * 2
    )
    assert list(first["seed"]) == [0, 1] * 3
    assert (first["delta"] == 0.1).all() and (first["num_annotations"] == 1).all()
    assert np.isfinite(table["kl"]).all() and (table["kl"] > 0).all()
    assert (table["kl_exact"] >= table["kl"] - 1e-4).all()
    assert table["delta_estimate"].isna().all() and table["converged"].isna().all()
    csv = pd.read_csv(tmp_path / "out" / "results.csv")
    assert list(csv.columns) == list(COLUMNS)
    np.testing.assert_allclose(csv["kl"], table["kl"], rtol=1e-12)
    assert list(csv["method"]) == list(table["method"])


def test_cell_matches_the_public_api(tmp_path):
    """A cell's SPA and GT rows equal a from-scratch computation with the cell's keys."""
    study = load_study(_write(tmp_path, TINY))
    table = run_study(study, tmp_path / "out")
    p = jnp.asarray(study.truths[0].p, jnp.result_type(float))
    key = jax.random.key(1)
    rho = cj.propose(fold(key, "proposals", 0.9), p, accuracy=0.9)
    biased = cj.simulate_counts(
        fold(key, "biased", 3, 0.3), p, rho, num_annotations=3, delta=0.3, one_star=0.99
    )
    expected = float(cj.kl_divergence(p, cj.soft_labels(biased)))
    row = table[(table["method"] == "SPA") & (table["delta"] == 0.3)]
    row = row[(row["num_annotations"] == 3) & (row["seed"] == 1)]
    np.testing.assert_allclose(row["kl"].item(), expected, rtol=1e-6)
    # Negative control: the other seed's cell differs.
    other = table[(table["method"] == "SPA") & (table["delta"] == 0.3)]
    other = other[(other["num_annotations"] == 3) & (other["seed"] == 0)]
    assert abs(other["kl"].item() - expected) > 1e-4


def test_cells_do_not_depend_on_the_rest_of_the_grid(tmp_path):
    """A cell's key derives from its own settings, not from its position in the run."""
    full = run_study(load_study(_write(tmp_path, TINY)), tmp_path / "full")
    text = TINY.replace("deltas = [0.1, 0.3]", "deltas = [0.3]").replace("[0, 1]", "[1]")
    part = run_study(load_study(_write(tmp_path, text, "small.toml")), tmp_path / "part")
    same = full[(full["delta"] == 0.3) & (full["seed"] == 1)].reset_index(drop=True)
    pd.testing.assert_frame_equal(_numbers(same), _numbers(part))


def test_resume_scores_only_missing_cells(tmp_path, monkeypatch):
    """A crash leaves some parts and a half-written temporary file: the rerun fills in."""
    study = load_study(_write(tmp_path, TINY))
    whole = run_study(study, tmp_path / "whole")
    out = tmp_path / "out"
    run_study(study, out)
    parts = sorted((out / "parts").glob("*.parquet"))
    for part in parts[::3]:
        part.unlink()
    (out / "parts" / ".half.parquet.123.tmp").write_bytes(b"PAR1 truncated")
    (out / "results.parquet").unlink()
    calls = []
    score = study_run.score_cell
    monkeypatch.setattr(study_run, "score_cell", lambda *a: calls.append(a[1]) or score(*a))
    resumed = run_study(study, out)
    assert len(calls) == len(parts[::3])
    assert sorted(p.name for p in (out / "parts").iterdir()) == sorted(p.name for p in parts)
    pd.testing.assert_frame_equal(_numbers(resumed), _numbers(whole))


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, capsys):
    text = TINY.replace("[1, 3, 10]", "[1, 2, 3, 5, 10, 20]").replace("[0, 1]", "[0, 1, 2]")
    study = _write(tmp_path, text)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "cleverjax._cli", "study", "run", str(study), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([*argv, "--quiet"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not any((out / "parts").glob("*.parquet")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no cell finished in 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    done = len(list((out / "parts").glob("*.parquet")))
    total = len(cells(load_study(study)))
    assert 0 < done < total, f"the kill came after {done} of {total} cells"
    assert not (out / "results.parquet").exists()
    code, _ = _run(["run", str(study), "--out", str(out), "--quiet"], capsys)
    assert code == 0
    code, _ = _run(["run", str(study), "--out", str(tmp_path / "whole"), "--quiet"], capsys)
    assert code == 0
    resumed = pd.read_parquet(out / "results.parquet")
    whole = pd.read_parquet(tmp_path / "whole" / "results.parquet")
    assert len(list((out / "parts").iterdir())) == total
    pd.testing.assert_frame_equal(_numbers(resumed), _numbers(whole))


def test_changed_study_is_refused_unless_forced(tmp_path, capsys, monkeypatch):
    study = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert _run(["run", str(study), "--out", str(out), "--quiet"], capsys)[0] == 0
    # Layout and comments are not a change.
    _write(tmp_path, "# same grid\n" + TINY.replace(" = ", "="))
    assert _run(["run", str(study), "--out", str(out), "--quiet"], capsys)[0] == 0
    _write(tmp_path, TINY.replace("[0.1, 0.3]", "[0.1, 0.5]"))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, res = _run(["run", str(study), "--out", str(out), "--quiet"], capsys)
    assert code == 2
    assert str(out) in res.err and "deltas" in res.err and "--force" in res.err
    assert len(res.err.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    calls = []
    score = study_run.score_cell
    monkeypatch.setattr(study_run, "score_cell", lambda *a: calls.append(a[1]) or score(*a))
    assert _run(["run", str(study), "--out", str(out), "--force", "--quiet"], capsys)[0] == 0
    table = pd.read_parquet(out / "results.parquet")
    assert sorted(table["delta"].unique()) == [0.1, 0.5]
    assert len(calls) == 3 * 2  # only delta 0.5 is new: N x seeds cells
    assert all(c.delta == 0.5 for c in calls)


def _counts_file(folder: Path, array, name="counts.npy") -> str:
    np.save(folder / name, np.asarray(array))
    return name


BAD = [
    ("no seeds", TINY.replace("seeds = [0, 1]\n", ""), "`seeds`", "missing"),
    ("unknown key", TINY + "colour = 'red'\n", "`colour`", "unknown key"),
    ("wrong type", TINY.replace("[0.1, 0.3]", '"0.1"'), "`deltas`", "expected a list"),
    ("float N", TINY.replace("[1, 3, 10]", "[1.5]"), "`annotations`", "integers"),
    ("bool seed", TINY.replace("[0, 1]", "[true]"), "`seeds`", "integers"),
    ("empty grid", TINY.replace("[1, 3, 10]", "[]"), "`annotations`", "empty"),
    ("repeated", TINY.replace("[0, 1]", "[1, 1]"), "`seeds`", "distinct"),
    ("delta range", TINY.replace("[0.1, 0.3]", "[0.1, 1.5]"), "`deltas`", "[0, 0.99]"),
    ("preset", TINY.replace('"Turkey"', '"Nope"'), "`truth.preset`", "unknown preset"),
    ("preset key", TINY.replace("images = 200", "imgs = 200"), "`truth.imgs`", "allowed"),
    ("method", TINY.replace('"SPA",', '"SPA", "Magic",'), "`methods`", "unknown method"),
    ("option", TINY + "[options.Bayes]\nsteps = 3\n", "`options.Bayes.steps`", "max_steps"),
    ("option type", TINY + "[options.Bayes]\nmax_steps = 'x'\n", "max_steps`", "integer"),
    ("not toml", TINY + "deltas = [\n", "", "not a valid TOML"),
    (
        "too many cal",
        TINY.replace("images = 100\n", "images = 500\n"),
        "`calibration_images`",
        "at most 200",
    ),
    ("counts missing", "COUNTS:nothing.npy", "`truth.counts`", "not found"),
    ("counts negative", "COUNTS:negative", "`truth.counts`", "row 1, column 1"),
    ("counts 1-D", "COUNTS:flat", "`truth.counts`", "shape (4,)"),
    ("counts text", "COUNTS:text", "`truth.counts`", "not a readable"),
    ("counts empty row", "COUNTS:empty", "`truth.counts`", "row 0 has no annotations"),
]


@pytest.mark.parametrize("case,text,key,message", BAD, ids=[b[0] for b in BAD])
def test_bad_study_is_one_line_naming_file_and_key(tmp_path, capsys, case, text, key, message):
    if text.startswith("COUNTS:"):
        kind = text.split(":", 1)[1]
        name = {
            "negative": lambda: _counts_file(tmp_path, [[1, 2], [3, -1]]),
            "flat": lambda: _counts_file(tmp_path, [1, 2, 3, 4]),
            "empty": lambda: _counts_file(tmp_path, [[0, 0], [3, 1]]),
            "text": lambda: (tmp_path / "c.npy").write_text("1,2\n3,4\n") and "c.npy",
        }.get(kind, lambda: kind)()
        text = TINY.replace('{ preset = "Turkey", images = 200 }', f'{{ counts = "{name}" }}')
        text = text.replace("calibration_images = 100", "calibration_images = 1")
    study = _write(tmp_path, text)
    out = tmp_path / "out"
    code, res = _run(["run", str(study), "--out", str(out)], capsys)
    assert code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert str(study) in lines[0] and key in lines[0] and message in lines[0], lines[0]
    assert "Traceback" not in res.err and not out.exists()


def test_missing_study_file(tmp_path, capsys):
    code, res = _run(["run", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "study file not found" in res.err and not (tmp_path / "o").exists()


def test_bayes_rows_carry_the_fit(tmp_path, monkeypatch):
    """Bayes rows take delta, its interval and the labels from `cleverjax.fit`."""
    seen = {}

    def fake_fit(key, counts, proposals, *, unbiased_counts, one_star, **options):
        seen.update(options, calibration=int((np.asarray(unbiased_counts).sum(1) > 0).sum()))
        p = jnp.asarray(study.truths[0].p, jnp.result_type(float))
        return cj.FitResult(**dict.fromkeys(cj.FitResult._fields))._replace(
            delta=0.25, delta_interval=(0.2, 0.3), posterior_mean=p, converged=True
        )

    text = TINY.replace('"SPA",', '"SPA", "Bayes",') + "[options.Bayes]\nmax_steps = 7\n"
    study = load_study(_write(tmp_path, text))
    monkeypatch.setattr(cj, "fit", fake_fit)
    table = run_study(study, tmp_path / "out")
    bayes = table[table["method"] == "Bayes"]
    assert len(bayes) == 12 and (bayes["delta_estimate"] == 0.25).all()
    assert (bayes["delta_lower"] == 0.2).all() and (bayes["delta_upper"] == 0.3).all()
    assert bayes["converged"].all() and (bayes["kl"] == 0).all()
    assert seen["max_steps"] == 7 and seen["num_ppc_replicates"] == 0
    assert seen["calibration"] == 100


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::cleverjax.IdentifiabilityWarning")
def test_minimal_study_with_the_model(tmp_path, capsys):
    text = """
truth = { preset = "Turkey", images = 200 }
deltas = [0.1, 0.3]
annotations = [1, 3, 10]
seeds = [0, 1]
methods = ["SPA", "CleverLabel", "CleverLabel+GT delta", "Bayes"]
[options.Bayes]
max_steps = 50
"""
    study = _write(tmp_path, text)
    code, res = _run(["run", str(study), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0, res.err
    table = pd.read_parquet(tmp_path / "out" / "results.parquet")
    bayes = table[table["method"] == "Bayes"]
    assert len(bayes) == 12
    assert (bayes["delta_lower"] <= bayes["delta_estimate"]).all()
    assert (bayes["delta_estimate"] <= bayes["delta_upper"]).all()


def test_plot_writes_a_png(tmp_path, capsys):
    study = _write(tmp_path, TINY)
    out = tmp_path / "out"
    assert _run(["run", str(study), "--out", str(out), "--quiet"], capsys)[0] == 0
    code, res = _run(["plot", str(out)], capsys)
    assert code == 0, res.err
    assert (out / "study.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, res = _run(["plot", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "results.parquet" in res.err


@pytest.mark.parametrize("argv", [["study"], ["study", "run"], ["study", "plot"]])
def test_help_has_an_example(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    assert "example:" in capsys.readouterr().out


def test_reproduce_fig3_resumes_in_its_folder(tmp_path, capsys, monkeypatch):
    argv = ["reproduce", "fig3", "--preset", "Turkey", "--images", "200", "--out"]
    argv += [str(tmp_path / "fig3"), "--annotations", "1", "10", "--deltas", "0.1", "0.4"]
    assert main(argv) == 0
    first = pd.read_csv(tmp_path / "fig3" / "fig3_table.csv")
    assert len(first) == 2 * 2 * 8  # deltas x N x (Figure 3a's methods and Table 2's CB)
    calls = []
    monkeypatch.setattr(study_run, "score_cell", lambda *a: calls.append(a))
    assert main(argv) == 0
    assert calls == []
    again = pd.read_csv(tmp_path / "fig3" / "fig3_table.csv")
    pd.testing.assert_frame_equal(_numbers(first), _numbers(again))
    capsys.readouterr()


@pytest.mark.x64
def test_study_in_float64(tmp_path):
    if not jax.config.jax_enable_x64:
        pytest.skip("run with JAX_ENABLE_X64=1")
    text = TINY.replace("[0.1, 0.3]", "[0.3]").replace("[1, 3, 10]", "[3]")
    table = run_study(load_study(_write(tmp_path, text)), tmp_path / "out")
    assert len(table) == 2 * 3 and np.isfinite(table["kl"]).all()


def test_several_truths_keep_their_names_and_order(tmp_path, capsys):
    counts = np.random.default_rng(0).multinomial(20, [0.6, 0.3, 0.1], size=200)
    _counts_file(tmp_path, counts)
    truths = '[{ preset = "Turkey", images = 200 }, { counts = "counts.npy", name = "a" }, '
    truths += '{ counts = "counts.npy", name = "b" }]'
    text = TINY.replace('{ preset = "Turkey", images = 200 }', truths).replace("[0, 1]", "[0]")
    study = _write(tmp_path, text)
    out = tmp_path / "out"
    assert _run(["run", str(study), "--out", str(out), "--quiet"], capsys)[0] == 0
    table = pd.read_parquet(out / "results.parquet")
    assert list(dict.fromkeys(table["truth"])) == ["Turkey", "a", "b"]
    a, b = (table[table["truth"] == t].reset_index(drop=True) for t in "ab")
    # Same content and seed: same numbers, yet separate cells.
    pd.testing.assert_frame_equal(
        _numbers(a).drop(columns=["truth", "cell"]), _numbers(b).drop(columns=["truth", "cell"])
    )
    assert not set(a["cell"]) & set(b["cell"])
    assert _run(["plot", str(out)], capsys)[0] == 0
