"""Out-of-core counts: `read_counts` equals `to_counts(read_annotations(...))`, batch by batch."""

import re

import numpy as np
import pandas as pd
import pytest

from cleverjax.io import (
    CountedTable,
    counts_to_table,
    read_annotations,
    read_counts,
    to_counts,
    write_table,
)

CLASSES = ("cat", "dog", "fox")


def shuffled_table(seed=0, num_tasks=40, classes=CLASSES):
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 4, size=(num_tasks, len(classes)))
    counts[:, 0] += 1  # every task has an annotation
    proposals = rng.integers(-1, len(classes), size=num_tasks)
    df = counts_to_table(
        counts, proposals, classes=list(classes), tasks=[f"t{i}" for i in range(num_tasks)]
    )
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def assert_same(read, table):
    """`read` (a CountedTable) holds what `to_counts(table)` and `table.rejected` hold."""
    assert isinstance(read, CountedTable)
    expected = to_counts(table)
    for field in ("biased", "unbiased", "proposals"):
        got, want = getattr(read.counts, field), getattr(expected, field)
        assert got.dtype == want.dtype == np.int32
        np.testing.assert_array_equal(got, want)
    assert read.counts.tasks == expected.tasks and read.counts.classes == expected.classes
    assert read.num_rows_read == table.num_rows_read
    assert read.num_annotations == table.num_annotations
    assert read.num_rows_read == read.num_annotations + len(read.rejected)
    pd.testing.assert_frame_equal(
        read.rejected[["row", "column", "value", "reason"]], table.rejected, check_dtype=False
    )


@pytest.mark.parametrize("batch_size", [7, 1 << 20])
def test_file_equals_read_annotations(tmp_path, batch_size):
    path = tmp_path / "annotations.parquet"
    write_table(shuffled_table(), path)
    assert_same(read_counts(path, batch_size=batch_size), read_annotations(path))
    # Negative control: one changed label changes the counts.
    df = shuffled_table()
    df.loc[0, "label"] = next(c for c in CLASSES if c != df.loc[0, "label"])
    other = tmp_path / "other.parquet"
    write_table(df, other)
    assert not np.array_equal(
        read_counts(other).counts.biased + read_counts(other).counts.unbiased,
        to_counts(read_annotations(path)).biased + to_counts(read_annotations(path)).unbiased,
    )


def test_integer_labels_and_given_classes(tmp_path):
    df = shuffled_table(seed=1, classes=("0", "1", "2", "10"))
    df["label"] = df["label"].astype(int)  # integers: class names sort numerically
    path = tmp_path / "ints.parquet"
    write_table(df, path)
    assert_same(read_counts(path, batch_size=5), read_annotations(path))
    given = ["0", "1", "2", "10", "11"]
    assert_same(read_counts(path, classes=given), read_annotations(path, classes=given))


def test_folder_of_files_equals_their_rows_in_path_order(tmp_path):
    df = shuffled_table(seed=2, num_tasks=60)
    folder = tmp_path / "parts"
    bounds = [0, 50, 51, 120, len(df)]
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        write_table(df.iloc[a:b], folder / f"part-{i}.parquet")
    (folder / "_SUCCESS").write_text("")  # ignored, as Spark and pyarrow do
    read = read_counts(folder, batch_size=16)
    assert read.source == str(folder)
    assert_same(read, read_annotations(df))


def bad_rows():
    return pd.DataFrame(
        {
            "task": ["t1", "t1", "t2", "t1", "t1", "t2", "t3", "t1", "t3"],
            "worker": ["a", "b", None, "a", "c", "a", "a", "d", "a"],
            "label": ["cat", "dgo", "cat", "cat", "dog", "dog", "cat", "dog", "cat"],
            "proposal": ["dog", "dog", "", "dog", "cat", "", "cat", "dog", "cat"],
        }
    )
    # rows: 0 used, 1 unknown class, 2 missing worker, 3 duplicate of 0, 4 conflicting
    # proposal, 5 used, 6 used, 7 used, 8 duplicate of 6 (in another batch)


@pytest.mark.parametrize("batch_size", [2, 100])
def test_skip_accounts_for_every_row(tmp_path, batch_size):
    path = tmp_path / "bad.parquet"
    write_table(bad_rows(), path)
    with pytest.warns(UserWarning, match=r"rejected 5 of 9 rows"):
        expected = read_annotations(path, classes=CLASSES, on_error="skip")
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: rejected 5 of 9 rows.*row 1"):
        read = read_counts(path, classes=CLASSES, on_error="skip", batch_size=batch_size)
    assert_same(read, expected)
    assert read.rejected["row"].tolist() == [1, 2, 3, 4, 8]
    assert (read.rejected["file"] == str(path)).all()


def test_bad_row_names_file_row_and_column(tmp_path):
    folder = tmp_path / "parts"
    write_table(bad_rows().iloc[:1], folder / "a.parquet")
    write_table(bad_rows().iloc[1:], folder / "b.parquet")
    file_b = re.escape(str(folder / "b.parquet"))
    with pytest.raises(ValueError, match=rf"^{file_b}, row 0, column 'label': 'dgo' is not a"):
        read_counts(folder, classes=CLASSES)
    # A duplicate before the first other problem is the first problem, across batches.
    dup_first = bad_rows().iloc[[0, 3, 1]]
    path = tmp_path / "dup.parquet"
    write_table(dup_first, path)
    columns = "columns 'task', 'worker', 'label', 'proposal'"
    pattern = rf"^{re.escape(str(path))}, row 1, {columns}: exact duplicate of row 0"
    with pytest.raises(ValueError, match=pattern):
        read_counts(path, classes=CLASSES, batch_size=1)
    with pytest.raises(ValueError, match=pattern):
        read_annotations(path, classes=CLASSES)


def test_conflicting_proposal_in_another_file_names_it(tmp_path):
    folder = tmp_path / "parts"
    write_table(bad_rows().iloc[:1], folder / "a.parquet")
    write_table(bad_rows().iloc[4:5], folder / "b.parquet")
    first = re.escape(str(folder / "a.parquet"))
    with pytest.raises(ValueError, match=rf"shown proposal 'cat' here but 'dog' in {first}, row 0"):
        read_counts(folder)


def test_csv_and_other_inputs_are_refused_clearly(tmp_path):
    csv = tmp_path / "annotations.csv"
    write_table(shuffled_table(), csv)
    with pytest.raises(ValueError, match=r"annotations\.csv: read_counts streams Parquet only"):
        read_counts(csv)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_counts(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no Parquet files"):
        read_counts(empty)
    wrong = tmp_path / "wrong.parquet"
    write_table(pd.DataFrame({"image": ["a"], "worker": ["w"], "label": ["x"]}), wrong)
    with pytest.raises(ValueError, match=r"missing required column\(s\) 'task'"):
        read_counts(wrong)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="cannot be read as Parquet"):
        read_counts(broken)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
        read_counts(wrong, batch_size=0)


@pytest.mark.parametrize(
    "values",
    [
        ["", "01", "-0", "0", "-5", "12", "1.5", "abc", None, "NA"],
        ["7", "99999999999999999999", "-3"],  # beyond int64: clipped as the parser does
        [0, -1, 2**62 + 5, -(2**63)],
        [1.0, 2.5, float("nan"), None],
        [True, False],
    ],
)
def test_vectorised_cell_parsing_agrees_with_the_parser(values):
    import pyarrow as pa

    from cleverjax.io.cells import parse_uniques
    from cleverjax.io.stream import _parse_dictionary

    got, want = _parse_dictionary(pa.array(values)), parse_uniques(values)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("batch_size", [7, 1 << 20])
@pytest.mark.parametrize("collide", [False, True])
def test_clean_table_is_counted_in_one_read(tmp_path, batch_size, collide, monkeypatch):
    from cleverjax.io import clean_counts, stream

    if collide:  # every name hashes alike: names are told apart by the fallback
        monkeypatch.setattr(clean_counts, "_fingerprints", lambda n: np.zeros(len(n), np.uint64))
    used = []
    fast = stream.clean_counts
    monkeypatch.setattr(stream, "clean_counts", lambda *a: used.append(fast(*a)) or used[-1])
    path = tmp_path / "clean.parquet"
    write_table(shuffled_table(seed=3), path)
    assert_same(read_counts(path, batch_size=batch_size), read_annotations(path))
    assert used[-1] is not None  # the fast path answered


@pytest.mark.parametrize("batch_size", [7, 1 << 20])
@pytest.mark.parametrize("change", ["duplicate", "conflict", "unknown", "missing"])
def test_one_bad_row_late_in_a_clean_table_is_found(tmp_path, batch_size, change):
    df = shuffled_table(seed=4)
    row = df.iloc[[0]].copy()  # repeats the first row, in another batch
    if change == "conflict":
        row["worker"] = "new"
        row["proposal"] = next(c for c in CLASSES if c != row["proposal"].iloc[0])
    elif change == "unknown":
        row["label"] = "cow"
    elif change == "missing":
        row["worker"] = ""
    df = pd.concat([df, row], ignore_index=True)
    path = tmp_path / "late.parquet"
    write_table(df, path)
    with pytest.warns(UserWarning, match="rejected 1 of"):
        expected = read_annotations(path, classes=CLASSES, on_error="skip")
    with pytest.warns(UserWarning, match="rejected 1 of"):
        read = read_counts(path, classes=CLASSES, on_error="skip", batch_size=batch_size)
    assert_same(read, expected)


@pytest.mark.parametrize("bad_row", [False, True])
def test_rare_class_note_equals_read_annotations(tmp_path, bad_row):
    # 1200 proposed annotations with one misspelt label; with ``bad_row`` a missing worker
    # as well, which sends the read down its second path (survey, then checked batches).
    rows = [(f"t{i}", f"w{j}", "cat" if (i + j) % 3 else "dog", "cat" if i % 2 else "dog")
            for i in range(300) for j in range(4)]  # fmt: skip
    df = pd.DataFrame(rows, columns=["task", "worker", "label", "proposal"])
    df.loc[5, "label"] = "dgo"
    if bad_row:
        df.loc[9, "worker"] = None
    path = tmp_path / "t.parquet"
    write_table(df, path)
    with pytest.warns(UserWarning) as streamed:
        read_counts(path, on_error="skip")
    with pytest.warns(UserWarning) as whole:
        read_annotations(path, on_error="skip")
    notes = [[str(w.message) for w in ws if "never proposed" in str(w.message)]
             for ws in (streamed, whole)]  # fmt: skip
    assert notes[0] == notes[1] and len(notes[0]) == 1 and "'dgo' (1 annotation)" in notes[0][0]
