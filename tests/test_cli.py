"""The command line: every command end to end on small inputs, and clean errors."""

import json

import numpy as np
import pandas as pd
import pytest

import cleverjax as cj
from cleverjax._cli import build_parser, main

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


def test_help_has_an_example_for_every_command(capsys):
    parser = build_parser()
    commands = ["simulate", "correct", "fit", "reproduce", "bench", "demo"]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "example:" in capsys.readouterr().out


def test_simulate_writes_a_readable_table(simulated):
    folder, table_path, truth_path = simulated
    table = cj.read_annotations(table_path)
    counts = cj.to_counts(table)
    assert counts.biased.sum() == 400 * 8
    assert counts.unbiased.sum() == 80 * 10
    assert set(counts.classes) == set(cj.preset("Turkey").classes)
    assert np.load(truth_path).shape == (400, 3)


def test_correct_writes_repaired_labels(simulated, capsys):
    folder, table_path, truth_path = simulated
    out = folder / "cleverlabel.csv"
    assert main(["correct", str(table_path), "--out", str(out)]) == 0
    labels = pd.read_csv(out)
    assert list(labels.columns)[0] == "task" and len(labels) == 400
    values = labels.drop(columns="task").to_numpy()
    np.testing.assert_allclose(values.sum(axis=1), 1, rtol=1e-5)
    assert "CleverLabel" in capsys.readouterr().out


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
            "`delta` must lie in",
        ),
    ],
)
def test_user_errors_exit_nonzero_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


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
