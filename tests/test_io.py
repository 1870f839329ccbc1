"""Annotation I/O: long tables (CSV, Parquet, DataFrames), dense counts and DCIC's JSON."""

import re
import warnings

import numpy as np
import pandas as pd
import pytest

from cleverjax._io import (
    AnnotationTable,
    Counts,
    annotations_to_table,
    counts_to_table,
    read_annotations,
    to_counts,
    write_table,
)

COUNTS = np.array([[3, 0, 1], [0, 2, 2], [1, 1, 1], [0, 0, 4]])
PROPOSALS = np.array([0, 2, -1, 2])
CLASSES = ("cat", "dog", "fox")
HEADER = "task,worker,label,proposal\n"


def write_csv(tmp_path, text, name="annotations.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def assert_accounting(table):
    assert table.num_rows_read == table.num_annotations + len(table.rejected)
    assert list(table.rejected.columns) == ["row", "column", "value", "reason"]


# ----------------------------------------------------------------------------------
# Round trips
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".pq"])
def test_counts_table_counts_round_trip(tmp_path, suffix):
    path = tmp_path / "nested" / f"annotations{suffix}"
    write_table(counts_to_table(COUNTS, PROPOSALS, classes=CLASSES), path)
    table = read_annotations(path)
    assert isinstance(table, AnnotationTable)
    assert table.source == str(path)
    assert table.classes == CLASSES and table.tasks == ("0", "1", "2", "3")
    assert table.num_classes == 3 and table.num_tasks == 4 and table.num_rows_read == 15
    for field in (table.task, table.worker, table.label, table.proposal):
        assert field.dtype == np.int32 and field.shape == (15,)
    assert_accounting(table)
    counts = to_counts(table)
    assert isinstance(counts, Counts)
    shown = PROPOSALS >= 0
    np.testing.assert_array_equal(counts.biased, np.where(shown[:, None], COUNTS, 0))
    np.testing.assert_array_equal(counts.unbiased, np.where(shown[:, None], 0, COUNTS))
    np.testing.assert_array_equal(counts.proposals, PROPOSALS)
    assert counts.biased.dtype == counts.proposals.dtype == np.int32
    # table -> frame -> table -> counts gives the same counts again.
    again = to_counts(read_annotations(table.to_frame()))
    for a, b in zip(again, counts, strict=True):
        np.testing.assert_array_equal(a, b)


def test_round_trip_without_proposals_gives_unbiased_counts():
    counts = to_counts(read_annotations(counts_to_table(COUNTS)))
    np.testing.assert_array_equal(counts.unbiased, COUNTS)
    assert not counts.biased.any()
    np.testing.assert_array_equal(counts.proposals, -np.ones(4))
    assert counts.classes == ("0", "1", "2")


def test_unused_class_needs_classes_argument():
    c = np.array([[2, 0, 1], [1, 0, 3]])
    df = counts_to_table(c, classes=CLASSES)
    assert read_annotations(df).classes == ("cat", "fox")
    counts = to_counts(read_annotations(df, classes=CLASSES))
    np.testing.assert_array_equal(counts.unbiased, c)


def test_counts_to_table_rows_and_workers():
    df = counts_to_table(np.array([[0, 2], [1, 0]]), np.array([1, -1]), tasks=["x", "y"])
    assert list(df.columns) == ["task", "worker", "label", "proposal"]
    assert df.values.tolist() == [
        ["x", "w0", "1", "1"],
        ["x", "w1", "1", "1"],
        ["y", "w0", "0", ""],
    ]
    custom = counts_to_table(np.array([[1, 1]]), worker_prefix="ann")
    assert custom["worker"].tolist() == ["ann0", "ann1"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(counts=np.array([[1, -2]])), r"`counts` must be non-negative counts; got -2"),
        (dict(counts=np.array([[1.5, 0.0]])), r"`counts` must hold whole numbers; got 1.5"),
        (dict(counts=np.array([1, 2])), r"`counts` must have 2 dimension"),
        (dict(counts=np.ones((2, 2), int), proposals=np.array([0, 2])), r"`proposals`.*got 2"),
        (dict(counts=np.ones((2, 2), int), classes=["a"]), r"`classes` must have 2 names"),
        (dict(counts=np.ones((2, 2), int), tasks=["a", "a"]), r"`tasks` has 'a' twice"),
    ],
)
def test_counts_to_table_rejects_bad_input(kwargs, match):
    counts = kwargs.pop("counts")
    with pytest.raises(ValueError, match=match):
        counts_to_table(counts, **kwargs)


def test_annotations_to_table_from_simulation():
    import jax

    import cleverjax as cj

    p = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.8, 0.1]])
    rho = np.array([0, 2, 1])
    pool = cj.Annotators(np.full(6, 0.2))
    batch = cj.simulate_annotations(
        jax.random.key(0),
        p,
        rho,
        num_annotations=np.array([5, 3, 4]),
        delta=pool,
        return_details=True,
    )
    labels = np.asarray(batch.labels)
    df = annotations_to_table(labels, rho, workers=np.asarray(batch.worker))
    table = read_annotations(df, classes=["0", "1", "2"])
    assert table.num_annotations == int((labels >= 0).sum()) == 12
    counts = to_counts(table)
    expected = np.stack([np.bincount(r[r >= 0], minlength=3) for r in labels])
    np.testing.assert_array_equal(counts.biased, expected)
    np.testing.assert_array_equal(counts.proposals, rho)
    workers = np.asarray(batch.worker)
    assert sorted(df["worker"][df["task"] == "0"]) == sorted(f"w{w}" for w in workers[0, :5])


def test_annotations_to_table_defaults_and_errors():
    df = annotations_to_table(np.array([[2, -1], [0, 1]]), classes=["a", "b", "c"])
    assert df.values.tolist() == [["0", "w0", "c", ""], ["1", "w0", "a", ""], ["1", "w1", "b", ""]]
    with pytest.raises(ValueError, match=r"`labels` must be class indices in \[0, 2\).*\(0, 1\)"):
        annotations_to_table(np.array([[0, 2]]), classes=["a", "b"])
    with pytest.raises(ValueError, match=r"`workers` must be >= 0 .* \(0, 1\)"):
        annotations_to_table(np.array([[0, 1]]), workers=np.array([[3, -1]]))
    with pytest.raises(ValueError, match=r"`labels` must be class indices or -1"):
        annotations_to_table(np.array([[0, -2]]))


# ----------------------------------------------------------------------------------
# Reading: names, types, classes
# ----------------------------------------------------------------------------------


def test_csv_keeps_names_as_written(tmp_path):
    path = write_csv(tmp_path, "task,worker,label,extra\n01,007,NA,x\n1,7,null,y\n01,7,NA,z\n")
    table = read_annotations(path)
    assert table.tasks == ("01", "1")
    assert table.workers == ("007", "7")
    assert table.classes == ("NA", "null")  # neither is a missing value
    np.testing.assert_array_equal(table.task, [0, 1, 0])
    np.testing.assert_array_equal(table.proposal, [-1, -1, -1])


def test_integer_labels_sort_numerically_and_strings_lexicographically(tmp_path):
    ints = write_csv(tmp_path, "task,worker,label\nt,a,10\nt,b,2\nt,c,1\n", "ints.csv")
    assert read_annotations(ints).classes == ("1", "2", "10")
    names = write_csv(tmp_path, "task,worker,label\nt,a,b10\nt,b,b2\nt,c,B\n", "names.csv")
    assert read_annotations(names).classes == ("B", "b10", "b2")
    # Leading zeros make a name, not an integer.
    zeros = write_csv(tmp_path, "task,worker,label\nt,a,01\nt,b,02\n", "zeros.csv")
    assert read_annotations(zeros).classes == ("01", "02")


def test_crowdkit_dataframe_without_proposal_column():
    df = pd.DataFrame(
        {"task": [7, 7, 8, 8], "worker": [1, 2, 1, 3], "label": [0, 1, 1, 1], "score": 0.5}
    )
    table = read_annotations(df)
    assert table.source == "<DataFrame>"
    assert table.tasks == ("7", "8") and table.workers == ("1", "2", "3")
    assert table.classes == ("0", "1")
    np.testing.assert_array_equal(table.proposal, [-1, -1, -1, -1])
    counts = to_counts(table)
    np.testing.assert_array_equal(counts.unbiased, [[1, 1], [0, 2]])
    np.testing.assert_array_equal(counts.proposals, [-1, -1])


def test_dataframe_missing_values_and_integer_proposals():
    df = pd.DataFrame(
        {
            "task": ["a", "a", "b"],
            "worker": ["x", "y", "x"],
            "label": [0.0, 1.0, 1.0],  # floats holding whole numbers are integers
            "proposal": [1, -1, 1],  # -1: no proposal shown
        }
    )
    table = read_annotations(df, classes=["cat", "dog"])
    np.testing.assert_array_equal(table.label, [0, 1, 1])
    np.testing.assert_array_equal(table.proposal, [1, -1, 1])
    bad = df.assign(worker=["x", None, "x"])
    with pytest.raises(ValueError, match=r"<DataFrame>, row 1, column 'worker': missing value"):
        read_annotations(bad)


def _typo_table(num_tasks=200, proposals=True):
    """``num_tasks`` x 5 annotations of cat/dog, proposed, with one label misspelt."""
    rng = np.random.default_rng(0)
    rows = [
        (
            f"t{i}",
            f"w{j}",
            rng.choice(["cat", "dog"]),
            ("cat" if i % 2 else "dog") if proposals else "",
        )
        for i in range(num_tasks)
        for j in range(5)
    ]
    df = pd.DataFrame(rows, columns=["task", "worker", "label", "proposal"])
    df.loc[7, "label"] = "dgo"
    return df


def test_rare_never_proposed_class_is_reported_as_a_typo():
    with pytest.warns(UserWarning, match=r"class 'dgo' \(1 annotation\) is never proposed"):
        table = read_annotations(_typo_table())
    assert table.classes == ("cat", "dgo", "dog")  # still kept: nothing is dropped
    # With the class list the typo is a bad row, and there is nothing to report.
    with pytest.warns(UserWarning, match=r"rejected 1 of 1000 rows") as caught:
        table = read_annotations(_typo_table(), classes=["cat", "dog"], on_error="skip")
    assert not any("never proposed" in str(w.message) for w in caught)
    assert table.classes == ("cat", "dog") and table.rejected.loc[0, "value"] == "dgo"


@pytest.mark.parametrize("kwargs", [dict(num_tasks=20), dict(proposals=False)])
def test_rare_class_note_needs_a_large_table_with_proposals(kwargs):
    # 100 annotations (one in 100 is not rare), or no proposals at all: nothing to report.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "dgo" in read_annotations(_typo_table(**kwargs)).classes


def test_classes_argument_fixes_order():
    df = pd.DataFrame({"task": ["a", "b"], "worker": ["x", "x"], "label": ["cat", "dog"]})
    table = read_annotations(df, classes=("dog", "cat", "fox"))
    assert table.classes == ("dog", "cat", "fox")
    np.testing.assert_array_equal(table.label, [1, 0])
    # Integer labels index the given classes.
    ints = df.assign(label=[2, 0])
    np.testing.assert_array_equal(
        read_annotations(ints, classes=("dog", "cat", "fox")).label, [2, 0]
    )


def test_integer_class_names_match_by_name():
    df = pd.DataFrame({"task": ["a", "b"], "worker": ["x", "x"], "label": [5, 1]})
    table = read_annotations(df, classes=["1", "2", "3", "4", "5"])
    np.testing.assert_array_equal(table.label, [4, 0])


@pytest.mark.parametrize("classes, error", [("cat", TypeError), ([], ValueError)])
def test_classes_argument_is_checked(classes, error):
    df = pd.DataFrame({"task": ["a"], "worker": ["x"], "label": ["cat"]})
    with pytest.raises(error, match="`classes`"):
        read_annotations(df, classes=classes)


# ----------------------------------------------------------------------------------
# Reading: bad files
# ----------------------------------------------------------------------------------

BAD_ROWS = {
    "missing task": (
        HEADER + "t1,a,cat,\n,b,cat,\n",
        3,
        "'task'",
        "missing value",
    ),
    "missing worker": (HEADER + "t1,a,cat,\nt1,,cat,\n", 3, "'worker'", "missing value"),
    "missing label": (HEADER + "t1,a,cat,\nt2,a,dog,\nt2,b,,\n", 4, "'label'", "missing value"),
    "unknown label": (
        HEADER + "t1,a,cat,\nt1,b,dog,\nt2,a,cat,\nt2,b,cat,\nt3,a,dog,\nt3,b,dgo,\n",
        7,
        "'label'",
        "'dgo' is not a known class; known: cat, dog",
    ),
    "unknown proposal": (
        HEADER + "t1,a,cat,cta\n",
        2,
        "'proposal'",
        "'cta' is not a known class; known: cat, dog",
    ),
    "index out of range": (
        HEADER + "t1,a,0,\nt1,b,2,\n",
        3,
        "'label'",
        r"class index 2 is out of range for 2 classes \(cat, dog\)",
    ),
    "negative index": (HEADER + "t1,a,1,\nt1,b,-3,\n", 3, "'label'", "negative class index -3"),
    "mixed types": (
        HEADER + "t1,a,cat,\nt1,b,dog,\nt1,c,1,\n",
        4,
        "'label'",
        "mixed-type labels: '1' is an integer but most labels are class names",
    ),
    "duplicate": (
        HEADER + "t1,a,cat,dog\nt1,b,cat,dog\nt1,a,cat,dog\n",
        4,
        "'task', 'worker', 'label', 'proposal'",
        "exact duplicate of row 2",
    ),
    "conflicting proposals": (
        HEADER + "t1,a,cat,cat\nt1,b,cat,\nt1,c,dog,dog\n",
        4,
        "'proposal'",
        "task 't1' is shown proposal 'dog' here but 'cat' in row 2; SPA assumes one proposal",
    ),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_names_file_row_and_column(tmp_path, case):
    text, row, column, reason = BAD_ROWS[case]
    path = write_csv(tmp_path, text)
    classes = ["cat", "dog"] if case != "negative index" else None
    pattern = rf"^{re.escape(str(path))}, row {row}, columns? {column}: {reason}"
    with pytest.raises(ValueError, match=pattern):
        read_annotations(path, classes=classes)


def test_rows_with_and_without_proposal_share_a_task(tmp_path):
    path = write_csv(tmp_path, HEADER + "t1,a,cat,\nt1,b,cat,dog\nt1,c,dog,\nt1,d,dog,dog\n")
    counts = to_counts(read_annotations(path))
    np.testing.assert_array_equal(counts.biased, [[1, 1]])
    np.testing.assert_array_equal(counts.unbiased, [[1, 1]])
    np.testing.assert_array_equal(counts.proposals, [1])


def test_blank_lines_keep_row_numbers(tmp_path):
    path = write_csv(tmp_path, HEADER + "t1,a,cat,\n\nt1,b,dgo,\n\n")
    with pytest.raises(ValueError, match=r"row 4, column 'label': 'dgo' is not a known class"):
        read_annotations(path, classes=["cat"])


def test_missing_columns_are_all_named(tmp_path):
    path = write_csv(tmp_path, "image,worker,class\nt1,a,cat\n")
    pattern = (
        rf"{re.escape(str(path))}: missing required column\(s\) 'task', 'label'; "
        r"found columns: 'image', 'worker', 'class'"
    )
    with pytest.raises(ValueError, match=pattern):
        read_annotations(path)


@pytest.mark.parametrize(
    "text, match", [("", "no annotations"), ("task,worker,label\n", "no annotations")]
)
def test_empty_file_has_no_annotations(tmp_path, text, match):
    path = write_csv(tmp_path, text)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: {match}"):
        read_annotations(path)


@pytest.mark.parametrize(
    "text, match",
    [
        ('task,worker,label\nt1,a,"cat\n', "EOF inside string"),
        ("task,worker,label\nt1,a,cat\nt1,b,cat,extra\n", "Expected 3 fields in line 3"),
        ("task,worker,label\nt1,a,cat,extra\n", "does not match length of data"),
        ("task,worker,label,label\nt1,a,cat,dog\n", "column 'label' appears 2 times"),
    ],
)
def test_malformed_csv_names_file_and_pandas_message(tmp_path, text, match):
    path = write_csv(tmp_path, text)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*{match}"):
        read_annotations(path)


def test_malformed_parquet(tmp_path):
    path = tmp_path / "annotations.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: cannot be read as Parquet"):
        read_annotations(path)


def test_missing_file_and_unknown_suffix(tmp_path):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_annotations(missing)
    with pytest.raises(ValueError, match=r"annotations\.txt.*'\.txt'.*\.csv, \.parquet, \.pq"):
        read_annotations(tmp_path / "annotations.txt")
    with pytest.raises(ValueError, match=r"out\.json.*'\.json'.*\.csv, \.parquet, \.pq"):
        write_table(pd.DataFrame({"a": [1]}), tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


# ----------------------------------------------------------------------------------
# on_error="skip"
# ----------------------------------------------------------------------------------


def test_skip_accounts_for_every_row(tmp_path):
    path = write_csv(
        tmp_path,
        HEADER
        + "t1,a,cat,dog\n"  # row 2: used
        + "t1,b,dgo,dog\n"  # row 3: unknown class
        + "t2,,cat,\n"  # row 4: missing worker
        + "t1,a,cat,dog\n"  # row 5: duplicate of row 2
        + "t1,c,dog,cat\n"  # row 6: conflicting proposal
        + "t2,a,dog,\n"  # row 7: used
        + "t3,a,cat,cat\n",  # row 8: used
    )
    with pytest.warns(UserWarning, match=r"rejected 4 of 7 rows.*first: .*row 3, column 'label'"):
        table = read_annotations(path, classes=["cat", "dog"], on_error="skip")
    assert_accounting(table)
    assert table.num_rows_read == 7 and table.num_annotations == 3
    assert table.rejected["row"].tolist() == [3, 4, 5, 6]
    assert table.rejected["column"].tolist() == [
        "label",
        "worker",
        "task,worker,label,proposal",
        "proposal",
    ]
    assert table.rejected["value"].tolist()[:2] == ["dgo", ""]
    reasons = table.rejected["reason"].tolist()
    assert "not a known class" in reasons[0] and reasons[1] == "missing value"
    assert reasons[2] == "exact duplicate of row 2" and "but 'dog' in row 2" in reasons[3]
    assert table.tasks == ("t1", "t2", "t3")
    counts = to_counts(table)
    np.testing.assert_array_equal(counts.biased, [[1, 0], [0, 0], [1, 0]])
    np.testing.assert_array_equal(counts.unbiased, [[0, 0], [0, 1], [0, 0]])
    np.testing.assert_array_equal(counts.proposals, [1, -1, 0])


def test_skip_without_problems_does_not_warn(tmp_path):
    path = write_csv(tmp_path, HEADER + "t1,a,cat,\n")
    table = read_annotations(path, on_error="skip")  # a warning would fail this test
    assert table.rejected.empty and table.num_rows_read == 1


def test_skip_with_every_row_bad_raises(tmp_path):
    path = write_csv(tmp_path, HEADER + "t1,a,dgo,\nt2,a,cta,\n")
    with pytest.raises(ValueError, match=r"all 2 rows were rejected; first: .*row 2"):
        read_annotations(path, classes=["cat"], on_error="skip")
