"""The labels file of an image folder: multi-hot (several classes per image) or continuous labels, which class
sub-folders cannot express.

Two formats, chosen by the file's suffix; every image path is relative to
the folder root (the `--data_dir` holding `train/` and `test/`), with `/`
as separator, and names one image file (.png, .jpg, .jpeg) inside the root:

    .csv    a header row, then one row per image. Either the columns
            `path,labels`: the image's class names separated by ";" (an
            empty field: no class), a multi-hot label; or `path,value`: one
            float, or k floats separated by ";" (a vector), a continuous label.

                path,labels                     path,value
                train/img_001.png,cat;dog       train/img_001.png,3.5
                train/img_002.png,dog           train/img_002.png,0.25

    .jsonl  one JSON object per line (blank lines skipped), with "path" and
            either "labels" (a list of class names; numbers are taken as
            names: 3 is "3") or "value" (a number, or a list of k numbers).

                {"path": "train/img_001.png", "labels": ["cat", "dog"]}
                {"path": "train/img_001.png", "value": 3.5}

One file holds the rows of every split; a split's images are the rows whose
path starts with `<split>/` (e.g. `train/`), in file order. The kind
(labels or value) and, for values, the width k are those of the first row;
a row of another kind or width is an error.

Multi-hot: the classes are the names that the TRAINING split's rows use,
sorted (names made only of digits by their number), fixed like a folder's
class names: a test row naming a class the training rows never use is an
error. Each image's label is the float32 row `[classes]`, 1.0 for its
classes. Continuous: the label is float32 `[]` (one value) or `[k]`.

Every error names the file and line (`labels.csv:7: ...`): a row without a
path or a label, a path outside the root, a missing image, an image listed
twice, a value that is not a finite number, a row of another kind or
width, an unknown class; and a split without rows names the file and split.
"""

import csv
import json
import math
import os

import numpy as np

from supcon_tf.data.sources import IMAGE_EXTENSIONS, image_files_dataset

__all__ = ["LABELS_FILE_SUFFIXES", "LabelledImages", "load_labelled_images", "read_labels_file"]

LABELS_FILE_SUFFIXES = (".csv", ".jsonl")
# The two kinds of rows: class names (multi-hot) or numbers (continuous).
MULTI_HOT, CONTINUOUS = "labels", "value"
CSV_SEPARATOR = ";"


class LabelledImages:
    """What `load_labelled_images` returns: `dataset`, `class_names` (multi-hot; None for continuous), `kind`
    ("labels" or "value"), `num_examples` and `label_shape` (`(classes,)`, `()` or `(k,)`)."""

    def __init__(self, dataset, class_names, kind, num_examples, label_shape):
        self.dataset, self.class_names, self.kind = dataset, class_names, kind
        self.num_examples, self.label_shape = num_examples, label_shape


def _fail(path, line, message):
    raise ValueError(f"{path}:{line}: {message}")


def _number(text, path, line):
    try:
        value = float(text)
    except (TypeError, ValueError):
        _fail(path, line, f"value {text!r} is not a number")
    if isinstance(text, bool) or not math.isfinite(value):
        _fail(path, line, f"value {text!r} is not a finite number")
    return value


def _csv_rows(path):
    """`(line, image path, kind, payload)` per data row of a .csv labels file."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header] not in (["path", MULTI_HOT], ["path", CONTINUOUS]):
            _fail(path, 1, f"the header must be 'path,labels' or 'path,value', received: {','.join(header or [])!r}")
        kind = header[1].strip()
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2 or not row[0].strip():
                _fail(path, line, f"a row must be '<path>,<{kind}>', received: {','.join(row)!r}")
            cell = row[1].strip()
            parts = [part.strip() for part in cell.split(CSV_SEPARATOR)] if cell else []
            if kind == CONTINUOUS:
                if not parts or any(not part for part in parts):
                    _fail(path, line, f"value {cell!r} must be a number or numbers separated by {CSV_SEPARATOR!r}")
                payload = [_number(part, path, line) for part in parts]
                payload = payload[0] if len(payload) == 1 else payload
            else:
                if any(not part for part in parts):
                    _fail(path, line, f"labels {cell!r} has an empty class name")
                payload = parts
            yield line, row[0].strip(), kind, payload


def _jsonl_rows(path):
    """`(line, image path, kind, payload)` per non-blank line of a .jsonl labels file."""
    with open(path, encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as error:
                _fail(path, line, f"not a JSON object ({error.msg})")
            if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not row["path"]:
                _fail(path, line, f"a row must be an object with a non-empty \"path\", received: {text.strip()!r}")
            kinds = [kind for kind in (MULTI_HOT, CONTINUOUS) if kind in row]
            if len(kinds) != 1 or set(row) != {"path", kinds[0]}:
                _fail(path, line, f"a row must have \"path\" and one of \"labels\", \"value\", received keys {sorted(row)}")
            kind, payload = kinds[0], row[kinds[0]]
            if kind == MULTI_HOT:
                if not isinstance(payload, list) or not all(
                    isinstance(name, (str, int)) and not isinstance(name, bool) and str(name) for name in payload
                ):
                    _fail(path, line, f"\"labels\" must be a list of class names, received: {payload!r}")
                payload = [str(name) for name in payload]
            else:
                values = payload if isinstance(payload, list) else [payload]
                if not values or not all(isinstance(v, (int, float)) for v in values):
                    _fail(path, line, f"\"value\" must be a number or a list of numbers, received: {payload!r}")
                values = [_number(v, path, line) for v in values]
                payload = values if isinstance(payload, list) else values[0]
            yield line, row["path"], kind, payload


def _class_order(name):
    return (0, int(name), name) if name.isdigit() else (1, 0, name)


def read_labels_file(labels_file, root):
    """Reads and checks a labels file against the folder `root`: `(kind, rows)`.

    `rows` is a list of `(line, split, absolute image path, payload)` in file
    order, payload a list of class names (kind "labels") or a float / list of
    k floats (kind "value"). Raises ValueError naming `file:line` for a bad
    row (module docstring), FileNotFoundError for a missing file.
    """
    labels_file = os.fspath(labels_file)
    if not labels_file.endswith(LABELS_FILE_SUFFIXES):
        raise ValueError(
            f"`labels_file` must be a .csv or .jsonl file, received: labels_file={labels_file!r}"
        )
    if not os.path.isfile(labels_file):
        raise FileNotFoundError(f"`labels_file` does not exist: labels_file={labels_file!r}")
    root = os.path.abspath(os.fspath(root))
    reader = _csv_rows if labels_file.endswith(".csv") else _jsonl_rows
    kind = width = None
    rows, seen = [], {}
    for line, image, row_kind, payload in reader(labels_file):
        row_width = len(payload) if isinstance(payload, list) and row_kind == CONTINUOUS else None
        if kind is None:
            kind, width = row_kind, row_width
        elif row_kind != kind:
            _fail(labels_file, line, f"every row must carry {kind!r} like the first, this one carries {row_kind!r}")
        elif row_width != width:
            _fail(labels_file, line, f"every value must have the first row's width ({width or 1}), this one has "
                                     f"{row_width or 1}")
        if os.path.isabs(image) or "\\" in image:
            _fail(labels_file, line, f"path {image!r} must be relative to the folder root, with '/' separators")
        full = os.path.normpath(os.path.join(root, image))
        relative = os.path.relpath(full, root)
        if relative.startswith(os.pardir):
            _fail(labels_file, line, f"path {image!r} is outside the folder root {root}")
        if not os.path.isfile(full):
            _fail(labels_file, line, f"path {image!r} is not an image file under {root}")
        if not full.lower().endswith(IMAGE_EXTENSIONS):
            _fail(labels_file, line, f"path {image!r} is not a {', '.join(IMAGE_EXTENSIONS)} file")
        if full in seen:
            _fail(labels_file, line, f"path {image!r} is listed twice (first on line {seen[full]})")
        seen[full] = line
        rows.append((line, relative.split(os.sep)[0], full, payload))
    if kind is None:
        raise ValueError(f"{labels_file}: no rows (a header and one row per image are needed)")
    return kind, rows


def load_labelled_images(root, labels_file, split, *, image_size=None, channels=3):
    """The images of `split` that `labels_file` lists, with their multi-hot or continuous labels, as a source.

    Args:
      root: the folder root (str or os.PathLike) that the file's paths are relative to.
      labels_file: a .csv or .jsonl labels file (module docstring).
      split: "train" or "test": the rows whose path starts with `<split>/`.
      image_size: None (one size for all images) or `(height, width)` / an int to resize to.
      channels: 1 or 3.

    Returns:
      `LabelledImages`: `dataset` of `(image uint8 [H, W, channels], label
      float32 [classes] | [] | [k])` in file order, `class_names` (multi-hot:
      the training split's classes, the multi-hot columns in order; None for
      continuous labels), `kind`, `num_examples`, `label_shape`.

    Raises:
      ValueError: a bad row (`file:line: ...`), a split without rows, a test
        row with a class the training rows do not use, a bad argument.
      FileNotFoundError: no labels file.
    """
    from supcon_tf._checks import as_size, choice

    choice(split, "split", ("train", "test"))
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"`channels` must be 1 or 3, received: channels={channels!r}")
    if image_size is not None:
        image_size = as_size(image_size, "image_size")
    labels_file = os.fspath(labels_file)
    kind, rows = read_labels_file(labels_file, root)
    chosen = [row for row in rows if row[1] == split]
    if not chosen:
        raise ValueError(
            f"{labels_file}: no rows for the {split} split (paths starting with '{split}/' under {root})"
        )
    paths = [full for _, _, full, _ in chosen]
    if kind == CONTINUOUS:
        labels = np.asarray([payload for _, _, _, payload in chosen], np.float32)
        return LabelledImages(
            image_files_dataset(paths, labels, image_size, channels), None, kind, len(paths), labels.shape[1:]
        )
    class_names = sorted(
        {name for _, row_split, _, payload in rows if row_split == "train" for name in payload}, key=_class_order
    )
    if not class_names:
        raise ValueError(f"{labels_file}: the train rows name no class")
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros((len(chosen), len(class_names)), np.float32)
    for row, (line, _, _, payload) in enumerate(chosen):
        for name in payload:
            if name not in index:
                _fail(labels_file, line, f"class {name!r} is not a class of the train rows ({', '.join(class_names)})")
            labels[row, index[name]] = 1.0
    return LabelledImages(
        image_files_dataset(paths, labels, image_size, channels), class_names, kind, len(paths), labels.shape[1:]
    )
