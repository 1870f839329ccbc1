"""The DCIC benchmark's JSON files: raw annotations and each fold's output.

Conventions follow the benchmark's own loader (``src/util/json.py`` and
``src/util/oracle.py`` of https://github.com/Emprime/dcic):

* An image is identified by its *id* (:func:`dcic_image_id`): the file name without
  ``.png`` and without a ``-[...`` suffix. Two paths with one id are one image; a file
  that holds both is refused, naming both paths.
* Default classes are the distinct labels sorted as text (``"0", "1", "10", "2"``), as
  ``np.unique`` sorts them in the benchmark; pass ``classes=`` for another order.
* An unknown soft label (test and unlabelled images) is ``"soft_gt": []`` with
  ``"gt": -1`` and ``"gt_verbose": "unknown"``; it is read as a row of NaN and a row of
  NaN is written back as ``[]``.
* Each image's ``info`` object is kept; whole-number budgets stay integers.
* An all-zero ``soft_gt`` is refused: it is no distribution (the benchmark divides it by
  its sum and trains on NaN). Write ``[]`` for an image whose label is unknown.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Float, Int

from .._checks import SIMPLEX_ATOL, ArrayIn, as_path, check_choice, existing_file
from .encode import Frame
from .tables import ON_ERROR, OnError, PathIn, check_names, finish
from .types import AnnotationTable

_HEADER_KEYS = ("name", "v_fold", "classes", "budget", "weighted_budget", "images")
_UNKNOWN = "unknown"  # gt_verbose of an image without a soft label


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
        budget: annotations spent (an ``int`` when the file holds a whole number).
        weighted_budget: annotations spent, weighted by their cost.
        infos: each image's ``info`` object (``{}`` where the file has none).
    """

    name: str
    v_fold: int
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    splits: tuple[str, ...]
    soft_labels: Float[np.ndarray, "images classes"]
    budget: int | float
    weighted_budget: int | float
    infos: tuple[dict[str, Any], ...] = ()

    @property
    def ids(self) -> tuple[str, ...]:
        """Each image's id (:func:`dcic_image_id`), to match images across files."""
        return tuple(dcic_image_id(p) for p in self.paths)


# ----------------------------------------------------------------------------------
# Image identity
# ----------------------------------------------------------------------------------


def dcic_image_id(path: str) -> str:
    """The benchmark's id of an image: what identifies it across folds and files.

    A path containing ``.png`` is cut to its file name less the last four characters;
    any other path is kept whole. Then anything from ``-[`` on (a legacy visualisation
    suffix) is dropped. This is the benchmark's rule, so ``fold1/img_0001.png``,
    ``fold2/img_0001.png`` and ``img_0001-[0.5_0.5].png`` are all ``img_0001``.

    Args:
        path: an image path.

    Returns:
        The image's id.

    Examples:
        >>> import cleverjax as cj
        >>> cj.dcic_image_id("Pig/fold2/img_0001-[0.5_0.5].png")
        'img_0001'
    """
    if not isinstance(path, str):
        raise TypeError(f"`path` must be a str; got {type(path).__name__}")
    image_id = path.split("/")[-1][:-4] if ".png" in path else path
    return image_id.split("-[")[0]


def match_dcic_ids(paths: Sequence[str], tasks: Sequence[str]) -> Int[np.ndarray, " paths"]:
    """For each of ``paths``, the index of the task in ``tasks`` with the same image id.

    This matches annotations (``AnnotationTable.tasks`` or ``Counts.tasks`` from
    :func:`read_dcic_annotations`) to a fold file's images (``DCICOutput.paths``) the
    way the benchmark does, whatever folder each path names.

    Args:
        paths: image paths to look up, e.g. ``DCICOutput.paths``.
        tasks: image paths with distinct ids, e.g. ``Counts.tasks``.

    Returns:
        ``(paths,)`` int64 task index of each path, ``-1`` where no task has its id.

    Raises:
        ValueError: if two of ``tasks`` share an id (the message names both).

    Examples:
        >>> import cleverjax as cj
        >>> cj.match_dcic_ids(["Pig/fold1/b.png", "Pig/fold3/z.png"],
        ...                   ["Pig/a.png", "Pig/b.png"]).tolist()
        [1, -1]
    """
    index = _index_by_id(check_names("tasks", tasks), lambda i, p: f"`tasks[{i}]` ({p!r})")
    return np.asarray([index.get(dcic_image_id(p), -1) for p in paths], dtype=np.int64)


_SAME_IMAGE = (
    "the DCIC benchmark identifies an image by its file name without '.png' and without a "
    "'-[...' suffix"
)


def _index_by_id(
    paths: Sequence[str],
    where: Callable[[int, str], str],
    earlier: Callable[[int, str], str] | None = None,
) -> dict[str, int]:
    """Position of each id; refuses two paths of one id, naming the later one with
    ``where`` and the earlier one with ``earlier`` (default ``where``)."""
    first: dict[str, int] = {}
    for i, p in enumerate(paths):
        image_id = dcic_image_id(p)
        j = first.setdefault(image_id, i)
        if j != i:
            raise ValueError(
                f"{where(i, p)} repeats {(earlier or where)(j, paths[j])}: both are image "
                f"{image_id!r}; {_SAME_IMAGE}"
            )
    return first


# ----------------------------------------------------------------------------------
# JSON helpers
# ----------------------------------------------------------------------------------


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


def _check_v_fold(v_fold: Any, where: str) -> int:
    if (
        isinstance(v_fold, bool)
        or not isinstance(v_fold, (int, np.integer))
        or not (1 <= v_fold <= 5)
    ):
        raise ValueError(f"{where} must be an int from 1 to 5; got {v_fold!r}")
    return int(v_fold)


def _check_budget(value: Any, where: str) -> int | float:
    """A finite number; whole numbers as ``int`` (the benchmark counts annotations)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{where} must be a number; got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{where} must be finite; got {value!r}")
    return int(value) if float(value).is_integer() else float(value)


# ----------------------------------------------------------------------------------
# annotations.json
# ----------------------------------------------------------------------------------


class _Entries(NamedTuple):
    """The annotations of an ``annotations.json``, one per entry over all sets."""

    image_paths: list[Any]
    labels: list[Any]
    set_of: np.ndarray  # int64: the set of each entry
    entry_of: np.ndarray  # int64: its position in the set


def _entries(doc: Any, shown: str) -> _Entries:
    """Every entry of every set, checked for structure."""
    if not isinstance(doc, list):
        raise ValueError(f"{shown}: expected a JSON list of annotation sets; got {_json_type(doc)}")
    image_paths: list[Any] = []
    labels: list[Any] = []
    set_of: list[int] = []
    entry_of: list[int] = []
    for i, anno_set in enumerate(doc):
        for j, entry in enumerate(_set_entries(anno_set, f"{shown}: set {i}")):
            image_paths.append(entry["image_path"])
            labels.append(entry["class_label"])
            set_of.append(i)
            entry_of.append(j)
    if not labels:
        raise ValueError(f"{shown}: no annotations (no annotation sets or all are empty)")
    return _Entries(
        image_paths, labels, np.asarray(set_of, np.int64), np.asarray(entry_of, np.int64)
    )


def _set_entries(anno_set: Any, at: str) -> list[dict[str, Any]]:
    if not isinstance(anno_set, dict):
        raise ValueError(f"{at}: expected an object; got {_json_type(anno_set)}")
    if "annotations" not in anno_set:
        raise ValueError(f"{at}: missing key 'annotations'")
    entries = anno_set["annotations"]
    if not isinstance(entries, list):
        raise ValueError(f"{at}: 'annotations' must be a list; got {_json_type(entries)}")
    for j, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{at}, annotation {j}: expected an object; got {_json_type(entry)}")
        for key in ("image_path", "class_label"):
            if key not in entry:
                raise ValueError(f"{at}, annotation {j}: missing key {key!r}")
            if isinstance(entry[key], (dict, list)):
                raise ValueError(
                    f"{at}, annotation {j}: {key!r} must be a string; got {_json_type(entry[key])}"
                )
    return entries


def _check_image_ids(entries: _Entries, shown: str) -> None:
    """One path per image id among the labelled entries, as the benchmark's oracle needs."""
    first: dict[str, int] = {}
    path_of: dict[str, int] = {}
    for k, (p, label) in enumerate(zip(entries.image_paths, entries.labels)):
        if label is None or not isinstance(p, str) or p in path_of:
            continue
        path_of[p] = k
        j = first.setdefault(dcic_image_id(p), k)
        if j != k:

            def at(m: int) -> str:
                return f"set {entries.set_of[m]}, annotation {entries.entry_of[m]}"

            raise ValueError(
                f"{shown}: {at(k)}: image_path {p!r} repeats {entries.image_paths[j]!r} "
                f"({at(j)}): both are image {dcic_image_id(p)!r}; {_SAME_IMAGE}, and refuses "
                f"two paths of one image"
            )


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

    Labels are class names, whatever they look like: without ``classes``, the classes are
    the distinct labels sorted as text, the benchmark's order (``"0", "1", "10", "2"``).
    Two image paths with one id (:func:`dcic_image_id`) are refused, as the benchmark
    refuses them; use :func:`match_dcic_ids` to find a fold file's images among the tasks.

    Args:
        path: the ``annotations.json`` file.
        classes: keyword-only; the class names in index order (default: the distinct
            labels, sorted as text, which is the benchmark's order).
        on_error: keyword-only; ``"raise"`` or ``"skip"``, as in :func:`read_annotations`.

    Returns:
        An :class:`AnnotationTable` with tasks in order of first appearance.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not JSON of this structure (the message names the
            file and the set and annotation, e.g. ``set 3, annotation 17: missing key
            'image_path'``), holds no annotations, names one image by two paths (the
            message names both), or (with ``on_error="raise"``) holds a label that is not
            a known class.

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
    entries = _entries(doc, shown)
    _check_image_ids(entries, shown)
    n = len(entries.labels)
    set_arr, entry_arr = entries.set_of, entries.entry_of
    label_arr = np.empty(n, dtype=object)
    label_arr[:] = entries.labels
    task_arr = np.empty(n, dtype=object)
    task_arr[:] = entries.image_paths
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
    no_label = np.fromiter((v is None for v in entries.labels), dtype=bool, count=n)
    return finish(
        frame,
        classes,
        on_error,
        check_duplicates=False,
        names_only=True,
        skipped=(no_label, "label", "no class label"),
    )


# ----------------------------------------------------------------------------------
# One fold's output
# ----------------------------------------------------------------------------------


def _check_splits(splits: Sequence[str] | None, n: int) -> tuple[str, ...]:
    if splits is None:
        return ("train",) * n
    if isinstance(splits, (str, bytes)) or not isinstance(splits, (Sequence, np.ndarray)):
        raise TypeError(f"`splits` must be a sequence of str; got {type(splits).__name__}")
    out = tuple(splits)
    if len(out) != n:
        raise ValueError(f"`splits` must have {n} entries, one per path; got {len(out)}")
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise TypeError(f"`splits[{i}]` must be a str; got {type(s).__name__} {s!r}")
    return out


def _check_infos(infos: Sequence[dict[str, Any]] | None, n: int) -> tuple[dict[str, Any], ...]:
    if infos is None:
        return ({},) * n
    if isinstance(infos, (str, bytes, dict)) or not isinstance(infos, Sequence):
        raise TypeError(f"`infos` must be a sequence of dicts; got {type(infos).__name__}")
    if len(infos) != n:
        raise ValueError(f"`infos` must have {n} entries, one per path; got {len(infos)}")
    for i, info in enumerate(infos):
        if not isinstance(info, dict):
            raise TypeError(f"`infos[{i}]` must be a dict; got {type(info).__name__}")
        try:
            json.dumps(info, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"`infos[{i}]` cannot be written as JSON: {e}") from e
    return tuple(infos)


def _check_soft_labels(
    soft_labels: ArrayIn, paths: tuple[str, ...], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows that are probability vectors, or all NaN (unknown); returns rows and unknown."""
    n = len(paths)
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
    unknown = np.isnan(p).all(axis=1) if k else np.zeros(n, bool)
    known_rows = np.where(unknown[:, None], 1.0 / max(k, 1), p)
    total = known_rows.sum(axis=1)
    checks = (
        (~np.isfinite(known_rows).all(axis=1), "is not finite (a row of NaN is unknown)"),
        ((known_rows < 0).any(axis=1), "has a negative entry"),
        (
            (known_rows == 0).all(axis=1),
            "is all zeros, which is no distribution; pass a row of NaN to write it as unknown ([])",
        ),
        (np.abs(total - 1) > SIMPLEX_ATOL, f"does not sum to 1 (within {SIMPLEX_ATOL})"),
    )
    for bad, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"`soft_labels` row {i} (path {paths[i]!r}) {what}: {p[i].tolist()} sums "
                f"to {total[i]:.6g} ({int(bad.sum())} such rows)"
            )
    return p, unknown


def _image_entry(
    path: str, split: str, row: np.ndarray, unknown: bool, classes: tuple[str, ...], info: dict
) -> dict[str, Any]:
    """One image as the benchmark writes it; ``gt`` is the first most likely class."""
    if unknown:
        return {
            "path": path,
            "split": split,
            "gt_verbose": _UNKNOWN,
            "gt": -1,
            "soft_gt": [],
            "info": info,
        }
    gt = int(np.argmax(row))
    return {
        "path": path,
        "split": split,
        "gt_verbose": classes[gt],
        "gt": gt,
        "soft_gt": row.tolist(),
        "info": info,
    }


def write_dcic_output(
    path: PathIn,
    *,
    dataset_name: str,
    v_fold: int,
    classes: Sequence[str],
    paths: Sequence[str],
    soft_labels: ArrayIn,
    splits: Sequence[str] | None = None,
    budget: float | int = 0,
    weighted_budget: float | int = 0,
    infos: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Write one fold's output file in the DCIC benchmark's format; parent folders are
    created.

    The file holds ``{"name", "v_fold", "classes", "budget", "weighted_budget",
    "images"}``, each image ``{"path", "split", "gt_verbose", "gt", "soft_gt", "info"}``
    with ``gt`` the argmax of ``soft_gt`` and ``gt_verbose`` its class name. A row of NaN
    in ``soft_labels`` (an unknown label, as :func:`read_dcic_output` reads ``[]``) is
    written as ``"soft_gt": []``, ``"gt": -1``, ``"gt_verbose": "unknown"``. Budgets
    that are whole numbers are written as integers.

    Args:
        path: the output JSON file.
        dataset_name: keyword-only; the dataset's name, e.g. ``"CIFAR10H"``.
        v_fold: keyword-only; the validation fold, 1 to 5.
        classes: keyword-only; class names, one per column of ``soft_labels``.
        paths: keyword-only; image paths, one per row of ``soft_labels``, with distinct
            image ids (:func:`dcic_image_id`).
        soft_labels: keyword-only; ``(images, classes)`` label distributions: finite,
            non-negative rows summing to 1 (within 1e-4), or rows of NaN (unknown).
        splits: keyword-only; each image's split (default ``"train"`` for all).
        budget: keyword-only; annotations spent.
        weighted_budget: keyword-only; annotations spent, weighted by cost.
        infos: keyword-only; each image's ``info`` object (default ``{}``), e.g.
            ``DCICOutput.infos``.

    Raises:
        ValueError: on a ``v_fold`` outside 1 to 5, lengths that disagree, two paths of
            one image (the message names both), or a row of ``soft_labels`` that is not a
            probability vector (the message names the argument and the row; an all-zero
            row is refused with a hint to write it as unknown).

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
    _index_by_id(image_paths, lambda i, p: f"`paths[{i}]` ({p!r})")
    n = len(image_paths)
    split_names = _check_splits(splits, n)
    info_objects = _check_infos(infos, n)
    p, unknown = _check_soft_labels(soft_labels, image_paths, len(class_names))
    doc = {
        "name": dataset_name,
        "v_fold": fold,
        "classes": list(class_names),
        "budget": _check_budget(budget, "`budget`"),
        "weighted_budget": _check_budget(weighted_budget, "`weighted_budget`"),
        "images": [
            _image_entry(
                image_paths[i], split_names[i], p[i], bool(unknown[i]), class_names, info_objects[i]
            )
            for i in range(n)
        ],
    }
    out = as_path("path", path)
    text = json.dumps(doc, allow_nan=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")


def _check_header(doc: Any, shown: str) -> tuple[str, int, tuple[str, ...], Any, Any, list]:
    if not isinstance(doc, dict):
        raise ValueError(f"{shown}: expected a JSON object; got {_json_type(doc)}")
    for key in _HEADER_KEYS:
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
    budget = _check_budget(doc["budget"], f"{shown}: 'budget'")
    weighted = _check_budget(doc["weighted_budget"], f"{shown}: 'weighted_budget'")
    images = doc["images"]
    if not isinstance(images, list):
        raise ValueError(f"{shown}: 'images' must be a list; got {_json_type(images)}")
    return doc["name"], v_fold, tuple(classes), budget, weighted, images


def _soft_row(row: Any, at: str, k: int) -> np.ndarray:
    """A stored ``soft_gt``: ``k`` finite, non-negative numbers, not all zero; or ``[]``
    (unknown, a row of NaN)."""
    if not isinstance(row, list) or len(row) not in (0, k):
        size = len(row) if isinstance(row, list) else _json_type(row)
        raise ValueError(
            f"{at}, key 'soft_gt': expected a list of {k} numbers (one per class) or an "
            f"empty list; got {size}"
        )
    if not row:
        return np.full(k, np.nan)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
        raise ValueError(f"{at}, key 'soft_gt': expected numbers; got {row!r}")
    r = np.asarray(row, dtype=np.float64)
    if not np.isfinite(r).all() or (r < 0).any() or not r.sum() > 0:
        hint = ""
        if np.isfinite(r).all() and not r.any():
            hint = (
                "; an all-zero soft_gt is no distribution (the benchmark divides it by its "
                "sum): store [] for an image whose label is unknown"
            )
        raise ValueError(
            f"{at}, key 'soft_gt': expected finite, non-negative numbers with a "
            f"positive sum; got {row!r}{hint}"
        )
    return r


def _read_image(image: Any, at: str, k: int) -> tuple[str, str, np.ndarray, dict[str, Any]]:
    if not isinstance(image, dict):
        raise ValueError(f"{at}: expected an object; got {_json_type(image)}")
    for key in ("path", "split", "soft_gt"):
        if key not in image:
            raise ValueError(f"{at}: missing key {key!r}")
    for key in ("path", "split"):
        if not isinstance(image[key], str):
            raise ValueError(f"{at}: {key!r} must be a string; got {_json_type(image[key])}")
    info = image.get("info", {})
    if not isinstance(info, dict):
        raise ValueError(f"{at}: 'info' must be an object; got {_json_type(info)}")
    return image["path"], image["split"], _soft_row(image["soft_gt"], at, k), info


def read_dcic_output(path: PathIn) -> DCICOutput:
    """Read one fold's output file of the DCIC benchmark (see :func:`write_dcic_output`).

    Soft labels are returned as stored: rows must be finite and non-negative with a
    positive sum (the benchmark renormalises rows that do not sum to 1). An image whose
    ``soft_gt`` is empty (unknown) gets a row of NaN, which :func:`write_dcic_output`
    writes back as ``[]``. An all-zero ``soft_gt`` is refused (it is no distribution);
    store ``[]`` for an unknown label. Each image's ``info`` is kept in ``infos``. Two
    images with one id (:func:`dcic_image_id`) are refused, as the benchmark refuses them.

    Args:
        path: the JSON file.

    Returns:
        A :class:`DCICOutput`.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file is not JSON, lacks a key, holds a value of the wrong
            kind (the message names the file, the image and the key), or names one image
            by two paths (the message names both).

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
    name, v_fold, classes, budget, weighted, images = _check_header(doc, shown)
    k = len(classes)
    read = [_read_image(image, f"{shown}: image {i}", k) for i, image in enumerate(images)]
    paths = tuple(r[0] for r in read)
    _index_by_id(
        paths,
        lambda i, p: f"{shown}: image {i}: path {p!r}",
        lambda j, q: f"image {j} (path {q!r})",
    )
    return DCICOutput(
        name=name,
        v_fold=v_fold,
        classes=classes,
        paths=paths,
        splits=tuple(r[1] for r in read),
        soft_labels=np.stack([r[2] for r in read]) if read else np.zeros((0, k)),
        budget=budget,
        weighted_budget=weighted,
        infos=tuple(r[3] for r in read),
    )
