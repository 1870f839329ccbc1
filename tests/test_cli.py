"""The command line: every command end to end on small inputs, and clean errors."""

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import cleverjax as cj
from cleverjax._cli import _help_with_default, build_parser, main

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.filterwarnings("ignore::cleverjax.ConvergenceWarning")


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    table, truth = folder / "turkey.csv", folder / "truth.npy"
    code = main(
        [
            "simulate",
            "--preset",
            "Turkey",
            "--images",
            "400",
            "--delta",
            "0.3",
            "--annotations",
            "8",
            "--calibration-images",
            "80",
            "--out",
            str(table),
            "--truth",
            str(truth),
        ]
    )
    assert code == 0
    return folder, table, truth


def _subparsers(parser):
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


def _options_without_default(parser) -> list[str]:
    """Options of every subcommand whose help is missing or does not state the default.

    Exempt: required options and the members of a required either-or group (one of them
    must be given, so none has a default)."""
    missing = []
    for name, cmd in _subparsers(parser).items():
        either_or = {
            a for g in cmd._mutually_exclusive_groups if g.required for a in g._group_actions
        }
        for action in cmd._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = _help_with_default(action)
            if not action.help or not (action.required or action in either_or or "default" in text):
                missing.append(f"{name} {action.option_strings[0]}")
    return missing


def test_help_has_an_example_for_every_command(capsys):
    parser = build_parser()
    commands = ["simulate", "correct", "fit", "reproduce", "bench", "demo", "study"]
    assert list(_subparsers(parser)) == commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "example:" in capsys.readouterr().out


def test_every_option_has_help_with_its_default(capsys):
    assert _options_without_default(build_parser()) == []
    with pytest.raises(SystemExit):
        build_parser().parse_args(["correct", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--delta DELTA delta for bias correction (default: 0.1)", "(default: 0.75)"):
        assert shown in text
    # Negative control: an option with no help, and one whose help hides a None default.
    bad = argparse.ArgumentParser()
    cmd = bad.add_subparsers().add_parser("x")
    cmd.add_argument("--a", default=3)
    cmd.add_argument("--b", help="no word on what happens without it")
    assert _options_without_default(bad) == ["x --a", "x --b"]


def test_simulate_writes_a_readable_table(simulated):
    folder, table_path, truth_path = simulated
    table = cj.read_annotations(table_path)
    counts = cj.to_counts(table)
    assert counts.biased.sum() == 400 * 8
    assert counts.unbiased.sum() == 80 * 10
    assert set(counts.classes) == set(cj.preset("Turkey").classes)
    assert np.load(truth_path).shape == (400, 3)


@pytest.mark.parametrize(
    "extra,cal_images,note",
    [
        ([], 20, "20 calibration images, every image (100 asked)"),
        (["--calibration-images", "5"], 5, "5 calibration images)"),
        (["--calibration-annotations", "0"], 0, "0 calibration images)"),
    ],
)
def test_simulate_says_how_many_calibration_images_it_wrote(
    tmp_path, capsys, extra, cal_images, note
):
    out = tmp_path / "t.csv"
    argv = ["simulate", "--preset", "Turkey", "--images", "20", "--delta", "0.3", "--out", str(out)]
    assert main([*argv, *extra]) == 0
    assert note in capsys.readouterr().err
    counts = cj.to_counts(cj.read_annotations(out))
    assert int((counts.unbiased.sum(axis=1) > 0).sum()) == cal_images


def test_correct_writes_repaired_labels(simulated, capsys):
    folder, table_path, truth_path = simulated
    out = folder / "cleverlabel.csv"
    assert main(["correct", str(table_path), "--out", str(out)]) == 0
    labels = pd.read_csv(out)
    assert list(labels.columns)[0] == "task" and len(labels) == 400
    values = labels.drop(columns="task").to_numpy()
    np.testing.assert_allclose(values.sum(axis=1), 1, rtol=1e-5)
    captured = capsys.readouterr()
    assert "CleverLabel" in captured.err and captured.out == ""


@pytest.mark.parametrize("out", [[], ["--out", "-"]], ids=["no --out", "--out -"])
def test_correct_writes_the_table_to_standard_output(simulated, capsys, out):
    folder, table_path, _ = simulated
    assert main(["correct", str(table_path), *out]) == 0
    captured = capsys.readouterr()
    labels = pd.read_csv(io.StringIO(captured.out))
    assert list(labels.columns) == ["task", *cj.preset("Turkey").classes] and len(labels) == 400
    assert "CleverLabel" in captured.err and "standard output" in captured.err


def _big_table(path, tasks=4000):
    """A table large enough to overflow a pipe's buffer (tasks x one annotation)."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "task": [f"t{i}" for i in range(tasks)],
            "worker": "w",
            "label": rng.integers(0, 3, tasks),
            "proposal": rng.integers(0, 3, tasks),
        }
    )
    frame.to_csv(path, index=False)


class _ClosedPipe(io.StringIO):
    """Standard output whose reader goes away after ``limit`` characters."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def write(self, text: str) -> int:
        if self.tell() + len(text) > self.limit:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_closed_pipe_is_not_an_error(simulated, monkeypatch, capsys):
    _, table_path, _ = simulated
    monkeypatch.setattr(sys, "stdout", _ClosedPipe(limit=100))
    assert main(["correct", str(table_path)]) == 141
    assert "error" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(tmp_path):
    # As in `cleverjax correct big.csv | head -n 2`, in a process of its own.
    _big_table(tmp_path / "big.csv")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    command = [sys.executable, "-m", "cleverjax._cli", "correct", "big.csv", "--preset", "Turkey"]
    with subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        head = [proc.stdout.readline() for _ in range(2)]
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(timeout=300) == 141, err
    assert head[0].startswith("task,") and "Traceback" not in err and "Exception" not in err


def test_rejected_rows_go_to_the_file_named_in_the_warning(tmp_path, capsys):
    path = tmp_path / "t.csv"
    path.write_text("task,worker,label,proposal\na,x,0,0\na,y,,0\nb,x,1,1\nc,y,2,1\n")
    args = ["correct", str(path), "--preset", "Turkey", "--out", str(tmp_path / "o.csv")]
    assert main([*args, "--rejected", str(tmp_path / "rej.csv")]) == 0
    err = capsys.readouterr().err
    assert f"listed in {tmp_path / 'rej.csv'}" in err and "`.rejected`" not in err
    assert "skipped 1 of 4 rows" in err and "row 3, column 'label'" in err
    rejected = pd.read_csv(tmp_path / "rej.csv")
    assert list(rejected.columns) == ["file", "row", "column", "value", "reason"]
    assert rejected.loc[0, "row"] == 3 and rejected.loc[0, "column"] == "label"
    assert rejected.loc[0, "file"] == str(path)
    # Without --rejected the warning says how to get the list.
    assert main(args) == 0
    assert "give --rejected FILE" in capsys.readouterr().err


@pytest.mark.filterwarnings("default::cleverjax.EmptyRowsWarning")  # the typo's row
def test_classes_option_turns_a_typo_into_a_skipped_row(tmp_path, capsys):
    rows = [f"t{i},w{j},{'cat' if (i + j) % 3 else 'dog'},{'cat' if i % 2 else 'dog'}"
            for i in range(250) for j in range(4)]  # fmt: skip
    rows[5] = "t1,w1,dgo,cat"
    rows += [f"t{i},u,{'cat' if i % 3 else 'dog'}," for i in range(40)]  # calibration
    path = tmp_path / "t.csv"
    path.write_text("task,worker,label,proposal\n" + "\n".join(rows) + "\n")
    out = tmp_path / "o.csv"
    args = ["correct", str(path), "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "class 'dgo' (1 annotation) is never proposed" in err and "--classes" in err
    assert list(pd.read_csv(out).columns) == ["task", "cat", "dgo", "dog"]
    assert main([*args, "--classes", "cat", "dog"]) == 0
    err = capsys.readouterr().err
    assert "never proposed" not in err
    assert "skipped 1 of 1040 rows" in err and "'dgo' is not a known class" in err
    assert list(pd.read_csv(out).columns) == ["task", "cat", "dog"]
    assert main([*args, "--classes", "cat", "dog", "cat"]) == 2
    assert "`--classes` has 'cat' twice, at positions 0 and 2" in capsys.readouterr().err
    assert main([*args, "--classes", "cat", ""]) == 2
    assert "`--classes[1]` is an empty name" in capsys.readouterr().err


@pytest.mark.filterwarnings("default::cleverjax.EmptyRowsWarning")
def test_warnings_go_to_standard_error(tmp_path, capsys):
    # Calibration annotations (no proposal) for one class only: two empty rows.
    path = tmp_path / "t.csv"
    path.write_text("task,worker,label,proposal\na,x,0,0\nb,x,1,1\nc,x,2,2\na,u,0,\n")
    assert main(["correct", str(path)]) == 0
    captured = capsys.readouterr()
    assert "warning: 2 of 3 class-blending rows" in captured.err
    assert captured.out.startswith("task,") and "warning" not in captured.out


def test_fit_passes_the_table_to_the_model_and_writes_its_results(simulated, monkeypatch, capsys):
    # The command's plumbing, with the model replaced; the real fit runs in the slow test
    # below, in the demo's test and in test_model.
    folder, table_path, _ = simulated
    seen = {}

    def fake_fit(key, biased, proposals, *, unbiased_counts, probe, **kwargs):
        seen.update(biased=np.asarray(biased), unbiased=np.asarray(unbiased_counts), **kwargs)
        n, k = biased.shape
        labels = np.full((n, k), 1 / k)
        return cj.FitResult(
            delta=0.3,
            delta_interval=(0.25, 0.35),
            one_star=0.99,
            one_star_interval=(0.99, 0.99),
            posterior_mean=labels,
            lower=labels,
            upper=labels,
            level=0.9,
            losses=np.zeros(7),
            converged=True,
            identified=True,
            delta_samples=np.full(10, 0.3),
            prior=None,
            params={},
            ppc=None,
            checks=(cj.ModelCheck("rejected_classes", 1.0, 0.5, True, "Rejections look fine."),),
            method="svi",
            seconds=1.5,
            step_seconds=0.1,
            stage_seconds=cj.StageSeconds(0.1, 1.0, 0.1, 0.2, 0.1),
            delta_widening=1.2 if kwargs.get("delta_by_difficulty") else 1.0,
            **(
                dict(
                    delta_by_difficulty=np.array([0.5, 0.2]),
                    delta_by_difficulty_interval=np.array([[0.4, 0.6], [0.1, 0.3]]),
                )
                if kwargs.get("delta_by_difficulty")
                else {}
            ),
        )

    monkeypatch.setattr(cj, "fit", fake_fit)
    out, summary = folder / "fake.csv", folder / "fake.json"
    argv = ["fit", str(table_path), "--out", str(out), "--summary", str(summary)]
    assert main([*argv, "--delta-from", "all"]) == 0
    assert seen["biased"].sum() == 400 * 8 and seen["unbiased"].sum() == 80 * 10
    assert seen["delta_from"] == "all" and seen["one_star"] == 0.99
    assert seen["rejection"] == "proportional"
    assert len(pd.read_csv(out)) == 400
    info = json.loads(summary.read_text())
    assert info["delta_interval"] == [0.25, 0.35] and info["steps"] == 7
    assert info["checks"][0]["name"] == "rejected_classes" and info["checks"][0]["passed"]
    err = capsys.readouterr().err
    assert "model check rejected_classes: passed (p = 0.5)" in err and "widen" not in err
    assert info["delta_widening"] == 1.0
    assert main([*argv, "--rejection", "uniform", "--delta-by-class"]) == 0
    assert seen["rejection"] == "uniform" and seen["delta_by_class"]
    assert main([*argv, "--delta-by-difficulty"]) == 0
    assert seen["delta_by_difficulty"] and not seen["delta_by_class"]
    err = capsys.readouterr().err
    assert "delta by difficulty: 0.5000 (0.4000 to 0.6000) on the hardest" in err
    assert "delta's interval is 1.20x as wide as its posterior given the fitted prior" in err

    # --select-variant: the comparison's best fit is written, with the scores.
    def fake_compare(key, biased, proposals, **kwargs):
        seen["compared"] = kwargs
        best = fake_fit(key, biased, proposals, **kwargs)
        return cj.ModelComparison(
            best="delta_by_class",
            top="delta_by_class",
            elpd={"spa": -120.0, "delta_by_class": -100.0},
            se={"spa": 5.0, "delta_by_class": 5.0},
            diff_se={"spa": 3.0, "delta_by_class": 0.0},
            pointwise={},
            images=80,
            folds=5,
            fits={"spa": best, "delta_by_class": best},
        )

    monkeypatch.setattr(cj, "compare_models", fake_compare)
    assert main([*argv, "--select-variant"]) == 0
    assert "rejection" not in seen["compared"] and "delta_by_class" not in seen["compared"]
    info = json.loads(summary.read_text())
    assert info["model_comparison"]["best"] == "delta_by_class"
    assert "model variant: delta_by_class" in capsys.readouterr().err
    code = main([*argv, "--per-annotator", "--rejection", "uniform"])
    assert code == 2
    assert "--per-annotator takes SPA's kernel" in capsys.readouterr().err


@pytest.mark.slow
def test_fit_writes_labels_and_summary(simulated):
    folder, table_path, truth_path = simulated
    out, summary = folder / "bayes.parquet", folder / "fit.json"
    assert main(["fit", str(table_path), "--out", str(out), "--summary", str(summary)]) == 0
    labels = pd.read_parquet(out)
    assert len(labels) == 400
    info = json.loads(summary.read_text())
    lo, hi = info["delta_interval"]
    assert lo <= info["delta"] <= hi and info["identified"]


def test_reproduce_fig3_writes_tables_and_plot(tmp_path):
    out = tmp_path / "fig3"
    code = main(
        [
            "reproduce",
            "fig3",
            "--preset",
            "MiceBone",
            "--images",
            "300",
            "--out",
            str(out),
            "--annotations",
            "1",
            "10",
            "--deltas",
            "0.1",
            "0.4",
        ]
    )
    assert code == 0
    for name in (
        "fig3_table.csv",
        "fig3_medians.csv",
        "table2_ablation.csv",
        "fig3_budget.csv",
        "fig3.json",
        "fig3.png",
    ):
        assert (out / name).stat().st_size > 0
    summary = json.loads((out / "fig3.json").read_text())
    assert len(summary["findings"]) == 4


def test_bench_tiny_prints_json(capsys):
    assert main(["bench", "--tiny", "--repeats", "1"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[-1]["case"] == "summary"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["correct", "missing.csv", "--out", "x.csv"], "annotation table not found: missing.csv"),
        (["reproduce", "fig3", "--counts", "missing.npy", "--out", "o"], "counts file not found"),
        (["simulate", "--preset", "Nope", "--delta", "0.1", "--out", "x.csv"], "unknown preset"),
        (
            [
                "simulate",
                "--preset",
                "Turkey",
                "--images",
                "20",
                "--delta",
                "1.5",
                "--out",
                "x.csv",
            ],
            "--delta and --one-star must satisfy 0 <= delta < one_star <= 1; got delta 1.5",
        ),
        *(
            (
                ["simulate", "--preset", "Turkey", "--images", "20", "--delta", "0.3", flag, "-1"],
                f"{flag} must be a count (0 or more); got -1",
            )
            for flag in ("--annotations", "--calibration-images", "--calibration-annotations")
        ),
    ],
)
def test_user_errors_exit_nonzero_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "error,code",
    [(TypeError("bug"), None), (KeyError("bug"), None), (ValueError("bad row"), 2)],
    ids=["TypeError", "KeyError", "ValueError"],
)
def test_a_bug_keeps_its_traceback(simulated, monkeypatch, capsys, error, code):
    _, table_path, _ = simulated

    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(cj, "to_counts", broken)
    argv = ["correct", str(table_path), "--out", "-"]
    if code is None:
        with pytest.raises(type(error)):
            main(argv)
    else:  # negative control: a user error is one line
        assert main(argv) == code
        assert "cleverjax correct: error: bad row" in capsys.readouterr().err


def test_bad_counts_file_names_the_row(tmp_path, capsys):
    path = tmp_path / "counts.npy"
    np.save(path, np.array([[1, 2], [3, -1]]))
    assert main(["reproduce", "fig3", "--counts", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "row 1, column 1" in err and str(path) in err


def test_correct_without_calibration_needs_a_class_matrix(tmp_path, capsys):
    frame = pd.DataFrame(
        {
            "task": ["a", "a", "b"],
            "worker": ["x", "y", "x"],
            "label": ["cat", "dog", "dog"],
            "proposal": ["cat", "cat", "dog"],
        }
    )
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    assert main(["correct", str(path), "--out", str(tmp_path / "o.csv")]) == 2
    assert "--class-matrix" in capsys.readouterr().err
