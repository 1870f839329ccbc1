"""The DCIC benchmark's JSON files: raw annotations and each fold's output."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float

from .._checks import SIMPLEX_ATOL, ArrayIn, as_path, check_choice, existing_file
from .encode import Frame
from .tables import ON_ERROR, OnError, PathIn, check_names, finish
from .types import AnnotationTable


class DCICOutput(NamedTuple):
    """One fold's output file of the DCIC benchmark (see :func:`read_dcic_output`).

    Attributes:
        name: the dataset name.
        v_fold: the validation fold, 1 to 5.
        classes: class names in column order.
        paths: image paths, one per row of ``soft_labels``.
        splits: each image's split, e.g. ``"train"``, ``"val"`` or ``"test"``.
        soft_labels: ``(images, classes)`` label distributions as stored; a row of NaN
            where the file holds no soft label (``"soft_gt": []``, DCIC's "unknown").
        budget: annotations spent.
        weighted_budget: annotations spent, weighted by their cost.
    """

    name: str
    v_fold: int
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    splits: tuple[str, ...]
    soft_labels: Float[np.ndarray, "images classes"]
    budget: float
    weighted_budget: float


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(v), "a number"
    )


def _load_json(path: PathIn, what: str) -> tuple[Any, str]:
    p = as_path(what, path)
    shown = str(path)
    existing_file(p, shown)
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f), shown
    except json.JSONDecodeError as e:
        raise ValueError(f"{shown}: not valid JSON: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{shown}: not UTF-8 text: {e}") from e


def read_dcic_annotations(
    path: PathIn,
    *,
    classes: Sequence[str] | None = None,
    on_error: OnError = "raise",
) -> AnnotationTable:
    """Read the DCIC benchmark's raw ``annotations.json``.

    The file is a JSON list of annotation sets, each an object with ``"annotations"``: a
    list of ``{"image_path": ..., "class_label": ..., "created_at": ...}`` (other keys,
    such as ``"name"`` and ``"user_mail"``, which the published files anonymise, are not
    used). Each entry becomes one annotation: task ``image_path``, worker ``f"set{i}"``
    for the ``i``-th set (from 0), label ``class_label``, no proposal. Entries whose
    ``class_label`` is null are left out, as the benchmark does, and listed in
    ``rejected`` with the reason ``"no class label"`` (without raising or warning).

    One set may hold several annotations of one image (sets generated from a table of
    counts do), so repeated entries are kept as separate annotations, as the benchmark
    counts them. In ``rejected``, ``row`` is the entry's 0-based position in the file
    over all sets, and ``column`` the key.

    Args:
        path: the ``annotations.json`` file.
        classes: keyword-only; the class names in index order (default: the distinct
            labels, sorted, which is the benchmark's order).
        on_error: keyword-only; ``"raise"`` or ``"skip"``, as in :func:`read_annotations`.

    Returns:
        An :class:`AnnotationTable` with tasks in order of first appearance.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not JSON of this structure (the message names the
            file and the set and annotation, e.g. ``set 3, annotation 17: missing key
            'image_path'``), holds no annotations, or (with ``on_error="raise"``) holds a
            label that is not a known class.

    Examples:
        >>> import json, pathlib, tempfile, cleverjax as cj
        >>> sets = [{"name": "INVALID", "user_mail": "INVALID", "annotation_time": 0,
        ...          "dataset_name": "Pig", "annotations": [
        ...     {"image_path": "Pig/a.png", "class_label": "2_Healthy", "created_at": ""},
        ...     {"image_path": "Pig/b.png", "class_label": None, "created_at": ""}]}]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "annotations.json"
        ...     _ = path.write_text(json.dumps(sets))
        ...     table = cj.read_dcic_annotations(path)
        >>> table.tasks, table.workers, table.classes, table.num_rows_read
        (('Pig/a.png',), ('set0',), ('2_Healthy',), 2)

    References:
        Schmarje et al., "Is one annotation enough? A data-centric image classification
        benchmark for noisy and ambiguous label estimation" (NeurIPS 2022),
        https://github.com/Emprime/dcic.
    """
    check_choice("on_error", on_error, ON_ERROR)
    doc, shown = _load_json(path, "read_dcic_annotations(path=...)")
    if not isinstance(doc, list):
        raise ValueError(f"{shown}: expected a JSON list of annotation sets; got {_json_type(doc)}")
    image_paths: list[Any] = []
    labels: list[Any] = []
    set_of: list[int] = []
    entry_of: list[int] = []
    for i, anno_set in enumerate(doc):
        if not isinstance(anno_set, dict):
            raise ValueError(f"{shown}: set {i}: expected an object; got {_json_type(anno_set)}")
        if "annotations" not in anno_set:
            raise ValueError(f"{shown}: set {i}: missing key 'annotations'")
        entries = anno_set["annotations"]
        if not isinstance(entries, list):
            raise ValueError(
                f"{shown}: set {i}: 'annotations' must be a list; got {_json_type(entries)}"
            )
        for j, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(
                    f"{shown}: set {i}, annotation {j}: expected an object; got {_json_type(entry)}"
                )
            for key in ("image_path", "class_label"):
                if key not in entry:
                    raise ValueError(f"{shown}: set {i}, annotation {j}: missing key {key!r}")
                if isinstance(entry[key], (dict, list)):
                    raise ValueError(
                        f"{shown}: set {i}, annotation {j}: {key!r} must be a string; got "
                        f"{_json_type(entry[key])}"
                    )
            image_paths.append(entry["image_path"])
            labels.append(entry["class_label"])
            set_of.append(i)
            entry_of.append(j)
    n = len(labels)
    if n == 0:
        raise ValueError(f"{shown}: no annotations (no annotation sets or all are empty)")
    set_arr = np.asarray(set_of, np.int64)
    entry_arr = np.asarray(entry_of, np.int64)
    label_arr = np.empty(n, dtype=object)
    label_arr[:] = labels
    task_arr = np.empty(n, dtype=object)
    task_arr[:] = image_paths
    frame = Frame(
        columns={
            "task": task_arr,
            "worker": np.char.add("set", set_arr.astype(str)).astype(object),
            "label": label_arr,
            "proposal": None,
        },
        n=n,
        rows=np.arange(n, dtype=np.int64),
        source=shown,
        where=lambda k: f"set {set_arr[k]}, annotation {entry_arr[k]}",
        names={"task": "image_path", "worker": "set", "label": "class_label", "proposal": "-"},
        field="key",
    )
    no_label = np.fromiter((v is None for v in labels), dtype=bool, count=n)
    return finish(
        frame,
        classes,
        on_error,
        check_duplicates=False,
        skipped=(no_label, "label", "no class label"),
    )


def _check_v_fold(v_fold: Any, where: str) -> int:
    if (
        isinstance(v_fold, bool)
        or not isinstance(v_fold, (int, np.integer))
        or not (1 <= v_fold <= 5)
    ):
        raise ValueError(f"{where} must be an int from 1 to 5; got {v_fold!r}")
    return int(v_fold)


def _check_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number; got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{where} must be finite; got {value!r}")
    return float(value)


def write_dcic_output(
    path: PathIn,
    *,
    dataset_name: str,
    v_fold: int,
    classes: Sequence[str],
    paths: Sequence[str],
    soft_labels: ArrayIn,
    splits: Sequence[str] | None = None,
    budget: float | int = 0.0,
    weighted_budget: float | int = 0.0,
) -> None:
    """Write one fold's output file in the DCIC benchmark's format; parent folders are
    created.

    The file holds ``{"name", "v_fold", "classes", "budget", "weighted_budget",
    "images"}``, each image ``{"path", "split", "gt_verbose", "gt", "soft_gt", "info"}``
    with ``gt`` the argmax of ``soft_gt`` and ``gt_verbose`` its class name.

    Args:
        path: the output JSON file.
        dataset_name: keyword-only; the dataset's name, e.g. ``"CIFAR10H"``.
        v_fold: keyword-only; the validation fold, 1 to 5.
        classes: keyword-only; class names, one per column of ``soft_labels``.
        paths: keyword-only; image paths, one per row of ``soft_labels``, distinct.
        soft_labels: keyword-only; ``(images, classes)`` label distributions: finite,
            non-negative rows summing to 1 (within 1e-4).
        splits: keyword-only; each image's split (default ``"train"`` for all).
        budget: keyword-only; annotations spent.
        weighted_budget: keyword-only; annotations spent, weighted by cost.

    Raises:
        ValueError: on a ``v_fold`` outside 1 to 5, lengths that disagree, repeated paths,
            or a row of ``soft_labels`` that is not a probability vector (the message
            names the argument and the row).

    Examples:
        >>> import pathlib, tempfile, numpy as np, cleverjax as cj
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "CIFAR10H-1.json"
        ...     cj.write_dcic_output(path, dataset_name="CIFAR10H", v_fold=1,
        ...                          classes=["cat", "dog"], paths=["a.png", "b.png"],
        ...                          soft_labels=np.array([[0.75, 0.25], [0.0, 1.0]]))
        ...     out = cj.read_dcic_output(path)
        >>> out.paths, out.splits, out.soft_labels.tolist()
        (('a.png', 'b.png'), ('train', 'train'), [[0.75, 0.25], [0.0, 1.0]])
    """
    if not isinstance(dataset_name, str):
        raise TypeError(f"`dataset_name` must be a str; got {type(dataset_name).__name__}")
    fold = _check_v_fold(v_fold, "`v_fold`")
    class_names = check_names("classes", classes)
    if not class_names:
        raise ValueError("`classes` must name at least one class; got an empty sequence")
    image_paths = check_names("paths", paths)
    n, k = len(image_paths), len(class_names)
    split_names = ("train",) * n
    if splits is not None:
        if isinstance(splits, (str, bytes)) or not isinstance(splits, (Sequence, np.ndarray)):
            raise TypeError(f"`splits` must be a sequence of str; got {type(splits).__name__}")
        split_names = tuple(splits)
        if len(split_names) != n:
            raise ValueError(f"`splits` must have {n} entries, one per path; got {len(splits)}")
        for i, s in enumerate(split_names):
            if not isinstance(s, str):
                raise TypeError(f"`splits[{i}]` must be a str; got {type(s).__name__} {s!r}")
    p = np.asarray(soft_labels)
    if p.dtype == object or not (
        np.issubdtype(p.dtype, np.floating) or np.issubdtype(p.dtype, np.integer)
    ):
        raise TypeError(f"`soft_labels` must hold real numbers; got dtype {p.dtype}")
    if p.shape != (n, k):
        raise ValueError(
            f"`soft_labels` must have shape ({n}, {k}), one row per path and one column per "
            f"class; got {p.shape}"
        )
    p = p.astype(np.float64)
    total = p.sum(axis=1)
    checks = (
        (~np.isfinite(p).all(axis=1), "is not finite"),
        ((p < 0).any(axis=1), "has a negative entry"),
        (np.abs(total - 1) > SIMPLEX_ATOL, f"does not sum to 1 (within {SIMPLEX_ATOL})"),
    )
    for bad, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"`soft_labels` row {i} (path {image_paths[i]!r}) {what}: {p[i].tolist()} sums "
                f"to {total[i]:.6g} ({int(bad.sum())} such rows)"
            )
    budget_f = _check_number(budget, "`budget`")
    weighted_f = _check_number(weighted_budget, "`weighted_budget`")
    gt = np.argmax(p, axis=1)
    images = [
        {
            "path": image_paths[i],
            "split": split_names[i],
            "gt_verbose": class_names[int(gt[i])],
            "gt": int(gt[i]),
            "soft_gt": p[i].tolist(),
            "info": {},
        }
        for i in range(n)
    ]
    doc = {
        "name": dataset_name,
        "v_fold": fold,
        "classes": list(class_names),
        "budget": budget_f,
        "weighted_budget": weighted_f,
        "images": images,
    }
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`path` must be a path (str or os.PathLike); got {type(path).__name__}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(doc, f, allow_nan=False)


def read_dcic_output(path: PathIn) -> DCICOutput:
    """Read one fold's output file of the DCIC benchmark (see :func:`write_dcic_output`).

    Soft labels are returned as stored: rows must be finite and non-negative with a
    positive sum (the benchmark renormalises rows that do not sum to 1). An image whose
    ``soft_gt`` is empty (unknown) gets a row of NaN.

    Args:
        path: the JSON file.

    Returns:
        A :class:`DCICOutput`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not JSON, lacks a key, or holds a value of the wrong
            kind (the message names the file, the image and the key).

    Examples:
        >>> import pathlib, tempfile, numpy as np, cleverjax as cj
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d) / "fold.json"
        ...     _ = path.write_text('{"name": "Pig", "v_fold": 2, "classes": ["a", "b"], '
        ...         '"budget": 0, "weighted_budget": 0, "images": [{"path": "x.png", '
        ...         '"split": "val", "soft_gt": [0.5, 0.5]}]}')
        ...     out = cj.read_dcic_output(path)
        >>> out.name, out.v_fold, out.classes, out.splits, out.soft_labels.tolist()
        ('Pig', 2, ('a', 'b'), ('val',), [[0.5, 0.5]])
    """
    doc, shown = _load_json(path, "read_dcic_output(path=...)")
    if not isinstance(doc, dict):
        raise ValueError(f"{shown}: expected a JSON object; got {_json_type(doc)}")
    for key in ("name", "v_fold", "classes", "budget", "weighted_budget", "images"):
        if key not in doc:
            raise ValueError(f"{shown}: missing key {key!r}; found keys: {', '.join(doc)}")
    if not isinstance(doc["name"], str):
        raise ValueError(f"{shown}: 'name' must be a string; got {_json_type(doc['name'])}")
    v_fold = _check_v_fold(doc["v_fold"], f"{shown}: 'v_fold'")
    classes = doc["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{shown}: 'classes' must be a non-empty list of strings; got {classes!r}")
    if len(set(classes)) != len(classes):
        raise ValueError(f"{shown}: 'classes' names a class twice: {classes!r}")
    budget = _check_number(doc["budget"], f"{shown}: 'budget'")
    weighted = _check_number(doc["weighted_budget"], f"{shown}: 'weighted_budget'")
    images = doc["images"]
    if not isinstance(images, list):
        raise ValueError(f"{shown}: 'images' must be a list; got {_json_type(images)}")
    k = len(classes)
    paths: list[str] = []
    splits: list[str] = []
    soft = np.full((len(images), k), np.nan)
    first_of: dict[str, int] = {}
    for i, image in enumerate(images):
        at = f"{shown}: image {i}"
        if not isinstance(image, dict):
            raise ValueError(f"{at}: expected an object; got {_json_type(image)}")
        for key in ("path", "split", "soft_gt"):
            if key not in image:
                raise ValueError(f"{at}: missing key {key!r}")
        for key in ("path", "split"):
            if not isinstance(image[key], str):
                raise ValueError(f"{at}: {key!r} must be a string; got {_json_type(image[key])}")
        if image["path"] in first_of:
            raise ValueError(
                f"{at}: path {image['path']!r} repeats image {first_of[image['path']]}"
            )
        first_of[image["path"]] = i
        row = image["soft_gt"]
        if not isinstance(row, list) or len(row) not in (0, k):
            size = len(row) if isinstance(row, list) else _json_type(row)
            raise ValueError(
                f"{at}, key 'soft_gt': expected a list of {k} numbers (one per class) or an "
                f"empty list; got {size}"
            )
        if row:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
                raise ValueError(f"{at}, key 'soft_gt': expected numbers; got {row!r}")
            r = np.asarray(row, dtype=np.float64)
            if not np.isfinite(r).all() or (r < 0).any() or not r.sum() > 0:
                raise ValueError(
                    f"{at}, key 'soft_gt': expected finite, non-negative numbers with a "
                    f"positive sum; got {row!r}"
                )
            soft[i] = r
        paths.append(image["path"])
        splits.append(image["split"])
    return DCICOutput(
        name=doc["name"],
        v_fold=v_fold,
        classes=tuple(classes),
        paths=tuple(paths),
        splits=tuple(splits),
        soft_labels=soft,
        budget=budget,
        weighted_budget=weighted,
    )
