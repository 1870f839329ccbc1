"""DCIC benchmark files: raw annotations, each fold's output, and their round trip."""

import json
import re

import numpy as np
import pytest

from cleverjax.io import (
    DCICOutput,
    dcic_image_id,
    match_dcic_ids,
    read_dcic_annotations,
    read_dcic_output,
    to_counts,
    write_dcic_output,
)

CLASSES = ("cat", "dog", "fox")


def assert_accounting(table):
    assert table.num_rows_read == table.num_annotations + len(table.rejected)


# ----------------------------------------------------------------------------------
# DCIC
# ----------------------------------------------------------------------------------


def dcic_set(entries):
    return {
        "name": "INVALID42",
        "user_mail": "INVALID",
        "annotation_time": 0.0,
        "dataset_name": "Pig",
        "annotations": [
            {"image_path": p, "class_label": c, "created_at": "01-01-2022-00-00-00"}
            for p, c in entries
        ],
    }


def write_json(tmp_path, doc, name="annotations.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_read_dcic_annotations(tmp_path):
    sets = [
        dcic_set([("Pig/b.png", "sick"), ("Pig/a.png", "healthy"), ("Pig/b.png", "sick")]),
        dcic_set([("Pig/a.png", None), ("Pig/a.png", "healthy"), ("Pig/c.png", "sick")]),
    ]
    table = read_dcic_annotations(write_json(tmp_path, sets))  # no warning for null labels
    assert_accounting(table)
    assert table.num_rows_read == 6 and table.num_annotations == 5
    assert table.tasks == ("Pig/b.png", "Pig/a.png", "Pig/c.png")
    assert table.workers == ("set0", "set1")
    assert table.classes == ("healthy", "sick")
    assert table.rejected.values.tolist() == [[3, "class_label", "", "no class label"]]
    counts = to_counts(table)
    # Repeated entries of one set are separate annotations, as the benchmark counts them.
    np.testing.assert_array_equal(counts.unbiased, [[0, 2], [2, 0], [0, 1]])
    np.testing.assert_array_equal(counts.proposals, [-1, -1, -1])
    fixed = read_dcic_annotations(write_json(tmp_path, sets), classes=["sick", "healthy", "x"])
    np.testing.assert_array_equal(to_counts(fixed).unbiased, [[2, 0, 0], [0, 2, 0], [1, 0, 0]])


@pytest.mark.parametrize(
    "doc, match",
    [
        ({"annotations": []}, r"expected a JSON list of annotation sets; got an object"),
        ([{"name": "x"}], r"set 0: missing key 'annotations'"),
        (
            [dcic_set([("a", "x")]), {"annotations": [{"image_path": "b"}]}],
            r"set 1, annotation 0: missing key 'class_label'",
        ),
        (
            [dcic_set([("a", "x"), ("b", "x")]) | {"annotations": [{}, {"class_label": "x"}]}],
            r"set 0, annotation 0: missing key 'image_path'",
        ),
        ([dcic_set([])], r"no annotations"),
    ],
)
def test_read_dcic_annotations_structure_errors(tmp_path, doc, match):
    path = write_json(tmp_path, doc)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: {match}"):
        read_dcic_annotations(path)


def test_read_dcic_annotations_bad_json_and_unknown_class(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('[{"annotations": [', encoding="utf-8")
    with pytest.raises(ValueError, match=rf"{re.escape(str(broken))}: not valid JSON"):
        read_dcic_annotations(broken)
    path = write_json(tmp_path, [dcic_set([("a", "x")]), dcic_set([("a", "x"), ("b", "y")])])
    pattern = rf"{re.escape(str(path))}, set 1, annotation 1, key 'class_label': 'y' is not a"
    with pytest.raises(ValueError, match=pattern):
        read_dcic_annotations(path, classes=["x"])
    with pytest.warns(UserWarning, match="rejected 1 of 3 rows"):
        table = read_dcic_annotations(path, classes=["x"], on_error="skip")
    assert table.num_annotations == 2 and table.rejected["row"].tolist() == [2]


def test_dcic_output_round_trip(tmp_path):
    p = np.array([[0.7, 0.2, 0.1], [0.0, 0.0, 1.0]])
    path = tmp_path / "out" / "Pig-2.json"
    write_dcic_output(
        path,
        dataset_name="Pig",
        v_fold=2,
        classes=list(CLASSES),
        paths=["Pig/a.png", "Pig/b.png"],
        soft_labels=p,
        splits=["train", "val"],
        budget=3,
        weighted_budget=1.5,
    )
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert set(raw) == {"name", "v_fold", "classes", "budget", "weighted_budget", "images"}
    assert raw["images"][1] == {
        "path": "Pig/b.png",
        "split": "val",
        "gt_verbose": "fox",
        "gt": 2,
        "soft_gt": [0.0, 0.0, 1.0],
        "info": {},
    }
    out = read_dcic_output(path)
    assert isinstance(out, DCICOutput)
    assert (out.name, out.v_fold, out.classes) == ("Pig", 2, CLASSES)
    assert out.paths == ("Pig/a.png", "Pig/b.png") and out.splits == ("train", "val")
    assert (out.budget, out.weighted_budget) == (3.0, 1.5)
    np.testing.assert_array_equal(out.soft_labels, p)


@pytest.mark.parametrize("v_fold", [0, 6, -1])
def test_dcic_output_rejects_bad_v_fold(tmp_path, v_fold):
    path = tmp_path / "fold.json"
    with pytest.raises(ValueError, match=rf"`v_fold` must be an int from 1 to 5; got {v_fold}"):
        write_dcic_output(
            path, dataset_name="Pig", v_fold=v_fold, classes=["a"], paths=["x"], soft_labels=[[1]]
        )
    assert not path.exists()


@pytest.mark.parametrize(
    "soft, match",
    [
        ([[0.5, 0.5], [0.5, 0.6]], r"`soft_labels` row 1 \(path 'y'\) does not sum to 1"),
        ([[0.5, 0.5], [1.5, -0.5]], r"`soft_labels` row 1 \(path 'y'\) has a negative entry"),
        ([[np.nan, 0.5], [0.5, 0.5]], r"`soft_labels` row 0 \(path 'x'\) is not finite"),
        ([[0.5, 0.5]], r"`soft_labels` must have shape \(2, 2\)"),
    ],
)
def test_dcic_output_rejects_bad_soft_labels(tmp_path, soft, match):
    with pytest.raises(ValueError, match=match):
        write_dcic_output(
            tmp_path / "fold.json",
            dataset_name="Pig",
            v_fold=1,
            classes=["a", "b"],
            paths=["x", "y"],
            soft_labels=np.array(soft),
        )


def test_read_dcic_output_errors_and_unknown_rows(tmp_path):
    good = {
        "name": "Pig",
        "v_fold": 1,
        "classes": ["a", "b"],
        "budget": 0,
        "weighted_budget": 0,
        "images": [
            {"path": "x", "split": "train", "soft_gt": [0.25, 0.75]},
            {"path": "y", "split": "test", "soft_gt": []},
        ],
    }
    out = read_dcic_output(write_json(tmp_path, good, "good.json"))
    np.testing.assert_array_equal(out.soft_labels[0], [0.25, 0.75])
    assert np.isnan(out.soft_labels[1]).all()
    cases = [
        ({k: v for k, v in good.items() if k != "budget"}, r"missing key 'budget'"),
        (good | {"v_fold": 7}, r"'v_fold' must be an int from 1 to 5; got 7"),
        (good | {"images": [{"path": "x", "split": "train"}]}, r"image 0: missing key 'soft_gt'"),
        (
            good | {"images": [{"path": "x", "split": "train", "soft_gt": [1.0]}]},
            r"image 0, key 'soft_gt': expected a list of 2 numbers",
        ),
        (
            good | {"images": good["images"][:1] * 2},
            r"image 1: path 'x' repeats image 0",
        ),
    ]
    for i, (doc, match) in enumerate(cases):
        path = write_json(tmp_path, doc, f"bad{i}.json")
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: {match}"):
            read_dcic_output(path)


# ----------------------------------------------------------------------------------
# Round trip of the benchmark's own files
# ----------------------------------------------------------------------------------


def benchmark_fold(images, budget=250, weighted=62.5, classes=("a", "b")):
    """A fold file as the benchmark writes it (``save_jsons``)."""
    return {
        "name": "Pig",
        "v_fold": 3,
        "classes": list(classes),
        "budget": budget,
        "weighted_budget": weighted,
        "images": images,
    }


def image(path, split, soft, info=None):
    gt = -1 if not soft else int(np.argmax(soft))
    return {
        "path": path,
        "split": split,
        "gt_verbose": "unknown" if gt < 0 else ["a", "b"][gt],
        "gt": gt,
        "soft_gt": soft,
        "info": {} if info is None else info,
    }


def rewrite(out, path):
    write_dcic_output(
        path,
        dataset_name=out.name,
        v_fold=out.v_fold,
        classes=out.classes,
        paths=out.paths,
        soft_labels=out.soft_labels,
        splits=out.splits,
        budget=out.budget,
        weighted_budget=out.weighted_budget,
        infos=out.infos,
    )


def test_benchmark_file_round_trips_byte_for_byte_in_content(tmp_path):
    doc = benchmark_fold(
        [
            image("Pig/fold1/x.png", "train", [0.25, 0.75], {"original_split": "train"}),
            image("Pig/fold2/y.png", "test", []),  # unknown: test images have no label
            image("Pig/fold3/z.png", "unlabeled", [], {"original_split": "val", "n": 3}),
        ]
    )
    first = write_json(tmp_path, doc, "in.json")
    out = read_dcic_output(first)
    assert np.isnan(out.soft_labels[1:]).all()
    assert out.infos == ({"original_split": "train"}, {}, {"original_split": "val", "n": 3})
    assert isinstance(out.budget, int) and out.budget == 250 and out.weighted_budget == 62.5
    second = tmp_path / "out.json"
    rewrite(out, second)
    # The written file holds what the benchmark wrote: [] with gt -1 and "unknown", the
    # info objects, and an integer budget.
    assert json.loads(second.read_text(encoding="utf-8")) == doc
    again = read_dcic_output(second)
    for a, b in zip(again, out, strict=True):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b


@pytest.mark.parametrize("budget, written", [(3, 3), (3.0, 3), (2.5, 2.5)])
def test_whole_budgets_are_written_as_integers(tmp_path, budget, written):
    path = tmp_path / "fold.json"
    write_dcic_output(
        path,
        dataset_name="Pig",
        v_fold=1,
        classes=["a"],
        paths=["x"],
        soft_labels=[[1.0]],
        budget=budget,
        weighted_budget=budget,
    )
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["budget"] == written and type(raw["budget"]) is type(written)
    assert type(read_dcic_output(path).weighted_budget) is type(written)


def test_partly_nan_row_is_still_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`soft_labels` row 0 \(path 'x'\) is not finite"):
        write_dcic_output(
            tmp_path / "f.json",
            dataset_name="Pig",
            v_fold=1,
            classes=["a", "b"],
            paths=["x"],
            soft_labels=[[np.nan, 1.0]],
        )


def test_all_zero_soft_gt_is_refused_with_what_to_do(tmp_path):
    path = write_json(tmp_path, benchmark_fold([image("x.png", "train", [0.0, 0.0])]))
    with pytest.raises(ValueError, match=r"image 0, key 'soft_gt'.*all-zero.*store \[\] for"):
        read_dcic_output(path)
    with pytest.raises(ValueError, match=r"row 0 \(path 'x.png'\) is all zeros.*row of NaN"):
        write_dcic_output(
            tmp_path / "f.json",
            dataset_name="Pig",
            v_fold=1,
            classes=["a", "b"],
            paths=["x.png"],
            soft_labels=[[0.0, 0.0]],
        )
    # Negative control: a row with some mass is read (and renormalised by the benchmark).
    ok = write_json(tmp_path, benchmark_fold([image("x.png", "train", [0.0, 2.0])]), "ok.json")
    np.testing.assert_array_equal(read_dcic_output(ok).soft_labels, [[0.0, 2.0]])


# ----------------------------------------------------------------------------------
# Image identity
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, expected",
    [
        ("Pig/fold1/img_0001.png", "img_0001"),
        ("img_0001-[0.5_0.5].png", "img_0001"),
        ("Pig/fold2/img_0001-[0.5_0.5].png", "img_0001"),
        ("Pig/fold1/img_0001.jpg", "Pig/fold1/img_0001.jpg"),  # only .png paths are cut
    ],
)
def test_image_id_follows_the_benchmark(path, expected):
    assert dcic_image_id(path) == expected


@pytest.mark.parametrize(
    "first, second", [("Pig/fold1/a.png", "Pig/fold2/a.png"), ("a.png", "a-[0.5_0.5].png")]
)
def test_two_paths_of_one_image_are_refused_naming_both(tmp_path, first, second):
    both = rf"{re.escape(repr(second))}.*{re.escape(repr(first))}.*both are image 'a'"
    doc = benchmark_fold([image(first, "train", [1.0, 0.0]), image(second, "val", [0.0, 1.0])])
    path = write_json(tmp_path, doc)
    with pytest.raises(ValueError, match=rf"image 1: path {both}"):
        read_dcic_output(path)
    with pytest.raises(ValueError, match=rf"`paths\[1\]` \({both}"):
        write_dcic_output(
            tmp_path / "f.json",
            dataset_name="Pig",
            v_fold=1,
            classes=["a", "b"],
            paths=[first, second],
            soft_labels=np.eye(2),
        )
    sets = [dcic_set([(first, "x")]), dcic_set([(second, "x")])]
    annotations = write_json(tmp_path, sets, "annotations.json")
    with pytest.raises(ValueError, match=rf"set 1, annotation 0: image_path {both}"):
        read_dcic_annotations(annotations)
    # Negative control: distinct ids are fine, and a null label does not count.
    fine = [dcic_set([(first, "x"), ("b.png", "x")]), dcic_set([(second, None)])]
    table = read_dcic_annotations(write_json(tmp_path, fine, "fine.json"))
    assert table.tasks == (first, "b.png")


def test_annotations_match_fold_files_by_id(tmp_path):
    sets = [dcic_set([("Pig/a.png", "x"), ("Pig/b.png", "y"), ("Pig/a.png", "y")])]
    counts = to_counts(read_dcic_annotations(write_json(tmp_path, sets)))
    fold = benchmark_fold(
        [
            image("Pig/fold2/b.png", "train", [0.0, 1.0]),
            image("Pig/fold1/a-[0.5_0.5].png", "val", [1.0, 0.0]),
            image("Pig/fold1/c.png", "test", []),
        ]
    )
    out = read_dcic_output(write_json(tmp_path, fold, "fold.json"))
    assert out.ids == ("b", "a", "c")
    rows = match_dcic_ids(out.paths, counts.tasks)
    assert rows.tolist() == [1, 0, -1] and rows.dtype == np.int64
    np.testing.assert_array_equal(counts.unbiased[rows[:2]], [[0, 1], [1, 1]])


# ----------------------------------------------------------------------------------
# Class order
# ----------------------------------------------------------------------------------


def test_default_class_order_is_the_benchmarks_text_order(tmp_path):
    labels = [str(c) for c in range(11)]
    sets = [dcic_set([(f"img{c}.png", c) for c in labels])]
    table = read_dcic_annotations(write_json(tmp_path, sets))
    expected = tuple(sorted(labels))  # as np.unique sorts strings
    assert table.classes == expected == ("0", "1", "10", "2", "3", "4", "5", "6", "7", "8", "9")
    counts = to_counts(table)
    # Each image's one annotation sits in its class's column under that order.
    np.testing.assert_array_equal(
        counts.unbiased.argmax(axis=1), [expected.index(c) for c in labels]
    )
    # Negative control: the numeric order of long tables is not what DCIC uses.
    assert table.classes != tuple(labels)
    # Integer-looking labels are class names: given classes are matched by name.
    fixed = read_dcic_annotations(write_json(tmp_path, sets, "b.json"), classes=labels[::-1])
    assert fixed.classes == tuple(labels[::-1])
    np.testing.assert_array_equal(to_counts(fixed).unbiased.argmax(axis=1), np.arange(11)[::-1])
