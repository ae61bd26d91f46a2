"""Evaluation: accuracy, kNN on frozen embeddings (function + Keras callback), corruption robustness (mCE), calibration (ECE).

Definitions implemented here:

* kNN top-1 (Wu et al. 2018, "InstDisc"; the monitor of DINO, Caron et al.
  2021): embeddings L2-normalised, cosine similarity s between a query and
  every training ("memory") embedding, the k most similar vote for their
  class with weight exp(s / T); the prediction is the class with the largest
  total weight. Defaults k = 200 (capped at the memory size), T = 0.1.
* Corruption error (Hendrycks & Dietterich 2019, Sec. 4): with E_{s,c}(f) the
  top-1 error of model f on corruption c at severity s,
      CE_c(f) = sum_s E_{s,c}(f) / sum_s E_{s,c}(baseline),      mCE = mean_c CE_c,
      relative CE_c(f) = sum_s (E_{s,c}(f) - E_clean(f)) / sum_s (E_{s,c}(baseline) - E_clean(baseline)),
      relative mCE = mean_c relative CE_c.
  Their baseline is AlexNet; ours is whatever the caller passes (the
  cross-entropy model in `experiments/digits_report.py`). Values are ratios
  (multiply by 100 for the papers' percentages).
* Expected calibration error (Guo et al. 2017; Naeini et al. 2015): confidence
  = max softmax probability, prediction = its argmax; M equal-width bins
  B_m = ((m-1)/M, m/M] (a confidence of exactly 0 goes to the first bin);
      ECE = sum_m |B_m| / N * |accuracy(B_m) - mean confidence(B_m)|, M = 15.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from supcon_tf import corruptions as corruptions_lib
from supcon_tf import data
from supcon_tf._checks import positive_int as _check_positive_int
from supcon_tf._checks import positive_number as _check_positive_number
from supcon_tf.encoders import encoder_of
from supcon_tf.models import EMBEDDING, REPRESENTATION

FEATURE_OUTPUTS = (REPRESENTATION, EMBEDDING)
ECE_BINS = 15


# ---------------------------------------------------------------------------
# Checks (private).
# ---------------------------------------------------------------------------






def _check_probabilities(probabilities, labels):
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[0] < 1 or probabilities.shape[1] < 2:
        raise ValueError(
            "`probabilities` must be [num_examples, num_classes] with num_examples >= 1 and num_classes >= 2, "
            f"received: probabilities with shape {probabilities.shape}"
        )
    if labels.shape != (probabilities.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"`labels` must be integers of shape [{probabilities.shape[0]}], received: labels with shape "
            f"{labels.shape} and dtype {labels.dtype}"
        )
    if not np.all(np.isfinite(probabilities)) or probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("`probabilities` must be finite and in [0, 1], received: values outside [0, 1]")
    return probabilities, labels


def _check_dataset(dataset):
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(
            f"`dataset` must be a tf.data.Dataset of (images, labels) batches, received: dataset={dataset!r}"
        )


# ---------------------------------------------------------------------------
# Running models over datasets.
# ---------------------------------------------------------------------------


def extract_features(model, dataset, output=REPRESENTATION):
    """Runs `model` in inference mode over `(images, labels)` batches and collects features.

    Args:
      model: a `SupConModel` (`output` picks its `REPRESENTATION`, the encoder
        output, or its `EMBEDDING`, the normalised projection), a classifier
        with an `.encoder` (its representation), or an encoder.
      dataset: `tf.data.Dataset` of `(images [B, H, W, C], labels [B])`.
      output: `"representation"` (default) or `"embedding"` (SupConModel only).

    Returns:
      `(features [N, D] float32, labels [N] int)` NumPy arrays.
    """
    _check_dataset(dataset)
    if output not in FEATURE_OUTPUTS:
        raise ValueError(f"`output` must be one of {FEATURE_OUTPUTS}, received: output={output!r}")
    if output == EMBEDDING:
        if not hasattr(model, "head"):
            raise ValueError(
                f"output='embedding' needs a model with a projection head (SupConModel), received: {type(model).__name__}"
            )
        forward = tf.function(
            lambda images: model(images, training=False)[EMBEDDING], reduce_retracing=True, autograph=False
        )
    else:
        encoder = encoder_of(model)
        forward = tf.function(lambda images: encoder(images, training=False), reduce_retracing=True,
                              autograph=False)
    return data.collect(forward, dataset, np.float32)


def _classifier_forward(model):
    """Images -> softmax probabilities of a classifier that returns logits (inference mode)."""
    return tf.function(
        lambda images: tf.nn.softmax(tf.cast(model(images, training=False), tf.float32)), reduce_retracing=True
    )


def predict_probabilities(model, dataset):
    """Softmax class probabilities of a classifier (returns logits) over `(images, labels)` batches.

    Returns:
      `(probabilities [N, K] float64, labels [N] int)` NumPy arrays.
    """
    _check_dataset(dataset)
    return data.collect(_classifier_forward(model), dataset, np.float64)


def accuracy(scores, labels):
    """Top-1 accuracy: fraction of rows of `scores` [N, K] (logits or probabilities) whose argmax is the label."""
    scores = np.asarray(scores)
    labels = np.asarray(labels)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],) or scores.shape[0] < 1:
        raise ValueError(
            f"`scores` must be [N, K] and `labels` [N] with N >= 1, received: shapes {scores.shape} and {labels.shape}"
        )
    return float(np.mean(np.argmax(scores, axis=1) == labels))


# ---------------------------------------------------------------------------
# Calibration.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CalibrationBins:
    """Reliability-diagram data: per-bin edges, counts, accuracy and mean confidence (NaN for empty bins)."""

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def ece(self):
        """Expected calibration error: sum_m |B_m| / N * |acc(B_m) - conf(B_m)|."""
        total = self.count.sum()
        filled = self.count > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.count[filled] / total * gaps))


def calibration_bins(probabilities, labels, num_bins=ECE_BINS):
    """Bins predictions by confidence into `num_bins` equal-width bins ((m-1)/M, m/M].

    Args:
      probabilities: `[N, K]` class probabilities.
      labels: `[N]` int true classes.
      num_bins: M >= 1 (15 by default, as in Guo et al. 2017).

    Returns:
      `CalibrationBins`.
    """
    probabilities, labels = _check_probabilities(probabilities, labels)
    num_bins = _check_positive_int(num_bins, "num_bins")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # Number of inner edges strictly below the confidence: bins are (lo, hi], 0 joins the first.
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(index, minlength=num_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_accuracy = np.bincount(index, weights=correct, minlength=num_bins) / count
        bin_confidence = np.bincount(index, weights=confidence, minlength=num_bins) / count
    return CalibrationBins(edges[:-1], edges[1:], count, bin_accuracy, bin_confidence)


def expected_calibration_error(probabilities, labels, num_bins=ECE_BINS):
    """ECE with `num_bins` equal-width confidence bins (a fraction in [0, 1]; x100 for percent)."""
    return calibration_bins(probabilities, labels, num_bins).ece


# ---------------------------------------------------------------------------
# kNN on frozen embeddings.
# ---------------------------------------------------------------------------


@tf.function(reduce_retracing=True)
def _knn_classify(queries, memory, memory_labels, k, num_classes, temperature):
    """`[q]` predicted classes of `queries` [q, D] against the normalised `memory` [N, D] (`knn_predict`).

    A module-level `tf.function` (k, num_classes, temperature: Python numbers), so repeated calls on the same
    shapes (an epoch-end monitor) trace it once.
    """
    similarity = tf.matmul(tf.math.l2_normalize(queries, axis=1), memory, transpose_b=True)  # [q, N]
    top_similarity, top_index = tf.math.top_k(similarity, k=k)  # [q, k], sorted descending
    # exp((s - s_max) / T): the row-wise constant factor exp(-s_max / T) leaves the argmax unchanged
    # and keeps small temperatures from overflowing float32.
    weights = tf.exp((top_similarity - top_similarity[:, :1]) / temperature)
    votes = tf.one_hot(tf.gather(memory_labels, top_index), num_classes) * weights[..., None]
    return tf.argmax(tf.reduce_sum(votes, axis=1), axis=1)


def knn_predict(train_features, train_labels, query_features, *, num_classes=None, k=200, temperature=0.1, batch_size=1024):
    """Weighted kNN classification with cosine similarity (see the module docstring).

    Args:
      train_features: `[N, D]` memory embeddings (normalised here).
      train_labels: `[N]` int classes in [0, num_classes).
      query_features: `[Q, D]` embeddings to classify (normalised here).
      num_classes: number of classes; default `max(train_labels) + 1`.
      k: neighbours (capped at N).
      temperature: T > 0 of the vote weights exp(similarity / T).
      batch_size: queries per similarity block (memory: batch_size x N floats).

    Returns:
      `[Q]` int64 predicted classes (NumPy).
    """
    train_features = np.asarray(train_features, np.float32)
    query_features = np.asarray(query_features, np.float32)
    train_labels = np.asarray(train_labels)
    if train_features.ndim != 2 or query_features.ndim != 2 or train_features.shape[1] != query_features.shape[1]:
        raise ValueError(
            "`train_features` [N, D] and `query_features` [Q, D] must be matrices of the same width, received: "
            f"shapes {train_features.shape} and {query_features.shape}"
        )
    if train_features.shape[0] < 1:
        raise ValueError("`train_features` must hold at least one embedding, received: 0 rows")
    if train_labels.shape != (train_features.shape[0],) or not np.issubdtype(train_labels.dtype, np.integer):
        raise ValueError(
            f"`train_labels` must be integers of shape [{train_features.shape[0]}], received: shape {train_labels.shape}"
        )
    if train_labels.min() < 0:
        raise ValueError(f"`train_labels` must be >= 0, received: min={train_labels.min()}")
    k = min(_check_positive_int(k, "k"), train_features.shape[0])
    temperature = _check_positive_number(temperature, "temperature")
    batch_size = _check_positive_int(batch_size, "batch_size")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    num_classes = _check_positive_int(num_classes, "num_classes")
    if train_labels.max() >= num_classes:
        raise ValueError(f"`train_labels` must be < num_classes ({num_classes}), received: max={train_labels.max()}")

    memory = tf.math.l2_normalize(tf.constant(train_features), axis=1)
    memory_labels = tf.constant(train_labels.astype(np.int32))
    predictions = [
        _knn_classify(
            tf.constant(query_features[start : start + batch_size]), memory, memory_labels, k, num_classes,
            temperature,
        ).numpy()
        for start in range(0, query_features.shape[0], batch_size)
    ]
    if not predictions:
        return np.zeros([0], np.int64)
    return np.concatenate(predictions)


def knn_top1(train_features, train_labels, query_features, query_labels, **kwargs):
    """Top-1 accuracy of `knn_predict` on `query_labels` (kwargs: num_classes, k, temperature, batch_size)."""
    query_labels = np.asarray(query_labels)
    if query_labels.shape != (np.asarray(query_features).shape[0],) or query_labels.shape[0] < 1:
        raise ValueError(
            f"`query_labels` must be [Q] with Q = len(query_features) >= 1, received: shape {query_labels.shape}"
        )
    return float(np.mean(knn_predict(train_features, train_labels, query_features, **kwargs) == query_labels))


class KNNMonitor(keras.callbacks.Callback):
    """Reports kNN top-1 of the frozen (inference-mode) encoder during pre-training.

    Every `every` epochs (and after the last epoch of `fit`), embeds
    `train_data` (the memory) and `eval_data` with the current encoder and
    writes the kNN top-1 of `eval_data` into the epoch logs under `name`, so
    the progress bar, `History`, CSVLogger and TensorBoard see it (put this
    callback before them in the list). Epochs that are not evaluated log NaN,
    which keeps CSV columns aligned.

    Args:
      train_data: `tf.data.Dataset` of un-augmented `(images, labels)` batches
        (e.g. `data.make_eval_dataset` of the training split).
      eval_data: dataset like `train_data` to classify (a validation split).
      every: evaluate every N epochs.
      k: neighbours (default 200, capped at the memory size).
      temperature: vote temperature T (default 0.1).
      num_classes: default: inferred from the memory labels.
      output: `"representation"` (encoder output, default) or `"embedding"`.
      name: the log key (default `"knn_top1"`).

    Example:

    >>> monitor = KNNMonitor(train_plain, val_plain, every=5)
    >>> model.fit(train_views, epochs=50, callbacks=[monitor])
    >>> monitor.results  # {epoch: top-1}
    """

    def __init__(
        self,
        train_data,
        eval_data,
        *,
        every=1,
        k=200,
        temperature=0.1,
        num_classes=None,
        output=REPRESENTATION,
        name="knn_top1",
    ):
        super().__init__()
        _check_dataset(train_data)
        _check_dataset(eval_data)
        self.train_data = train_data
        self.eval_data = eval_data
        self.every = _check_positive_int(every, "every")
        self.k = _check_positive_int(k, "k")
        self.temperature = _check_positive_number(temperature, "temperature")
        self.num_classes = None if num_classes is None else _check_positive_int(num_classes, "num_classes")
        if output not in FEATURE_OUTPUTS:
            raise ValueError(f"`output` must be one of {FEATURE_OUTPUTS}, received: output={output!r}")
        self.output = output
        if not isinstance(name, str) or not name:
            raise ValueError(f"`name` must be a non-empty string, received: name={name!r}")
        self.name = name
        self.results = {}
        self._last_epoch = None

    def on_train_begin(self, logs=None):
        self._last_epoch = (self.params or {}).get("epochs")

    def evaluate(self):
        """kNN top-1 of the current model (no logging)."""
        train_features, train_labels = extract_features(self.model, self.train_data, self.output)
        eval_features, eval_labels = extract_features(self.model, self.eval_data, self.output)
        return knn_top1(
            train_features,
            train_labels,
            eval_features,
            eval_labels,
            num_classes=self.num_classes,
            k=self.k,
            temperature=self.temperature,
        )

    def on_epoch_end(self, epoch, logs=None):
        due = (epoch + 1) % self.every == 0 or (self._last_epoch is not None and epoch + 1 == self._last_epoch)
        value = self.evaluate() if due else float("nan")
        if due:
            self.results[epoch] = value
        if logs is not None:
            logs[self.name] = value


# ---------------------------------------------------------------------------
# Corruption robustness.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CorruptionResult:
    """Errors and ECEs of one model on clean and corrupted data.

    `errors[c]` and `eces[c]` are `[num_severities]` arrays (severity 1 first);
    errors are top-1 error rates in [0, 1].
    """

    clean_error: float
    clean_ece: float
    errors: dict
    eces: dict
    severities: tuple = corruptions_lib.SEVERITIES

    def accuracy_by_severity(self):
        """`[1 + num_severities]` top-1 accuracy averaged over corruptions (index 0 = clean)."""
        mean_error = np.mean([self.errors[c] for c in self.errors], axis=0)
        return np.concatenate([[1.0 - self.clean_error], 1.0 - mean_error])

    def ece_by_severity(self):
        """`[1 + num_severities]` ECE averaged over corruptions (index 0 = clean)."""
        return np.concatenate([[self.clean_ece], np.mean([self.eces[c] for c in self.eces], axis=0)])

    def to_dict(self):
        return {
            "clean_error": self.clean_error,
            "clean_ece": self.clean_ece,
            "errors": {c: [float(v) for v in e] for c, e in self.errors.items()},
            "eces": {c: [float(v) for v in e] for c, e in self.eces.items()},
            "severities": list(self.severities),
        }


def _score(probabilities, labels, num_bins):
    probabilities, labels = np.concatenate(probabilities), np.concatenate(labels)
    return 1.0 - accuracy(probabilities, labels), expected_calibration_error(probabilities, labels, num_bins)


def evaluate_corruptions(
    models,
    dataset,
    *,
    corruptions=corruptions_lib.CORRUPTION_NAMES,
    severities=corruptions_lib.SEVERITIES,
    seed=0,
    num_bins=ECE_BINS,
):
    """Top-1 error and ECE of classifiers on `dataset`, clean and under each corruption and severity.

    Args:
      models: a classifier returning logits (`CrossEntropyModel`,
        `LinearProbe`), or a dict `{name: classifier}`: every corrupted batch
        is then made once and fed to all of them (identical inputs, less work).
      dataset: `tf.data.Dataset` of `(images [B, H, W, C] float in [0, 1],
        labels [B])` (e.g. `data.make_eval_dataset` of the test split).
        Corrupted batches are seeded by `seed` and the batch index
        (`corruptions.corrupt_dataset`), so models evaluated on the same
        dataset and seed, in one call or not, see the same corrupted images.
      corruptions: names from `corruptions.CORRUPTION_NAMES`.
      severities: subset of 1..5.
      seed: int, seeds the noise corruptions.
      num_bins: ECE bins.

    Returns:
      A `CorruptionResult`, or `{name: CorruptionResult}` for a dict of models.
    """
    _check_dataset(dataset)
    if not corruptions or any(c not in corruptions_lib.CORRUPTIONS for c in corruptions):
        raise ValueError(
            f"`corruptions` must be a non-empty list of {corruptions_lib.CORRUPTION_NAMES}, "
            f"received: corruptions={corruptions!r}"
        )
    if not severities or any(s not in corruptions_lib.SEVERITIES for s in severities):
        raise ValueError(f"`severities` must be a non-empty subset of 1..5, received: severities={severities!r}")
    single = not isinstance(models, dict)
    named = {"model": models} if single else dict(models)
    if not named:
        raise ValueError("`models` must be a classifier or a non-empty dict of classifiers, received: {}")
    forwards = {name: _classifier_forward(model) for name, model in named.items()}

    def run(batches):
        probabilities = {name: [] for name in forwards}
        labels = []
        for images, batch_labels in batches:
            for name, forward in forwards.items():
                probabilities[name].append(np.asarray(forward(images), np.float64))
            labels.append(np.asarray(batch_labels))
        if not labels:
            raise ValueError("`dataset` must not be empty, received: a dataset with no batches")
        return {name: _score(p, labels, num_bins) for name, p in probabilities.items()}

    clean = run(dataset)
    errors = {name: {} for name in forwards}
    eces = {name: {} for name in forwards}
    for corruption in corruptions:
        rows = {name: [] for name in forwards}
        for severity in severities:
            scores = run(corruptions_lib.corrupt_dataset(dataset, corruption, severity, seed=seed))
            for name, score in scores.items():
                rows[name].append(score)
        for name in forwards:
            errors[name][corruption] = np.asarray([error for error, _ in rows[name]])
            eces[name][corruption] = np.asarray([ece for _, ece in rows[name]])
    results = {
        name: CorruptionResult(clean[name][0], clean[name][1], errors[name], eces[name], tuple(severities))
        for name in forwards
    }
    return results["model"] if single else results


def _check_error_tables(model_errors, baseline_errors):
    if not isinstance(model_errors, dict) or not isinstance(baseline_errors, dict) or not model_errors:
        raise ValueError("`model_errors` and `baseline_errors` must be non-empty dicts {corruption: [errors per severity]}")
    if set(model_errors) != set(baseline_errors):
        raise ValueError(
            "`model_errors` and `baseline_errors` must cover the same corruptions, received: "
            f"{sorted(model_errors)} and {sorted(baseline_errors)}"
        )
    tables = {}
    for name in model_errors:
        model_row = np.asarray(model_errors[name], np.float64)
        baseline_row = np.asarray(baseline_errors[name], np.float64)
        if model_row.ndim != 1 or model_row.shape != baseline_row.shape or model_row.size < 1:
            raise ValueError(
                f"errors of {name!r} must be equal-length 1-D rows (one per severity), received: shapes "
                f"{model_row.shape} and {baseline_row.shape}"
            )
        tables[name] = (model_row, baseline_row)
    return tables


def corruption_errors(model_errors, baseline_errors):
    """CE_c = sum_s E_{s,c}(model) / sum_s E_{s,c}(baseline) for every corruption c.

    A corruption on which the baseline makes no error at all gives NaN (the
    ratio is undefined).
    """
    result = {}
    for name, (model_row, baseline_row) in _check_error_tables(model_errors, baseline_errors).items():
        denominator = baseline_row.sum()
        result[name] = float(model_row.sum() / denominator) if denominator > 0 else float("nan")
    return result


def relative_corruption_errors(model_errors, model_clean_error, baseline_errors, baseline_clean_error):
    """Relative CE_c = sum_s (E_{s,c} - E_clean)(model) / sum_s (E_{s,c} - E_clean)(baseline).

    NaN for a corruption whose baseline degradation sum_s (E_{s,c} - E_clean)
    is <= 0: the baseline is not hurt by it, and the ratio has no meaning.
    """
    result = {}
    for name, (model_row, baseline_row) in _check_error_tables(model_errors, baseline_errors).items():
        denominator = np.sum(baseline_row - baseline_clean_error)
        numerator = np.sum(model_row - model_clean_error)
        result[name] = float(numerator / denominator) if denominator > 0 else float("nan")
    return result


def _mean_defined(values):
    values = np.asarray(list(values), np.float64)
    defined = values[np.isfinite(values)]
    return float(defined.mean()) if defined.size else float("nan")


def mean_corruption_error(model_errors, baseline_errors):
    """mCE: the mean of `corruption_errors` over corruptions (undefined, NaN, ones are left out)."""
    return _mean_defined(corruption_errors(model_errors, baseline_errors).values())


def relative_mean_corruption_error(model_errors, model_clean_error, baseline_errors, baseline_clean_error):
    """Relative mCE: the mean of `relative_corruption_errors` (undefined, NaN, ones are left out)."""
    return _mean_defined(
        relative_corruption_errors(model_errors, model_clean_error, baseline_errors, baseline_clean_error).values()
    )
