"""Evaluation: ECE and mCE against hand-computed values, kNN against brute-force NumPy, the kNN callback, corruption runs."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import corruptions, data, encoders, evaluation, layers, models

# ---------------------------------------------------------------------------
# Calibration.
# ---------------------------------------------------------------------------


def test_ece_hand_computed():
    # Confidences 0.9 (right), 0.9 (wrong): bin (13/15, 14/15]: accuracy 0.5, confidence 0.9, gap 0.4.
    # Confidences 0.58 (right), 0.55 (right): bin (8/15, 9/15]: accuracy 1, confidence 0.565, gap 0.435.
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.58, 0.42], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 1])
    expected = 2 / 4 * 0.4 + 2 / 4 * 0.435
    assert evaluation.expected_calibration_error(probabilities, labels) == pytest.approx(expected, abs=1e-12)
    bins = evaluation.calibration_bins(probabilities, labels)
    assert bins.count.tolist() == [0] * 8 + [2] + [0] * 4 + [2] + [0]
    assert bins.accuracy[13] == 0.5 and bins.confidence[8] == pytest.approx(0.565)
    assert np.isnan(bins.accuracy[0]) and len(bins.lower) == 15
    np.testing.assert_allclose(bins.upper - bins.lower, 1 / 15)


def test_ece_other_bin_counts_and_edges():
    # 3 classes, 2 bins (0, .5], (.5, 1]: confidences 0.4 (wrong) | 0.7 (right), 1.0 (right).
    probabilities = np.array([[0.4, 0.3, 0.3], [0.7, 0.2, 0.1], [0.0, 1.0, 0.0]])
    labels = np.array([2, 0, 1])
    expected = 1 / 3 * abs(0.0 - 0.4) + 2 / 3 * abs(1.0 - 0.85)
    assert evaluation.expected_calibration_error(probabilities, labels, num_bins=2) == pytest.approx(expected)
    # Exactly 0.5 belongs to the lower bin (bins are (lo, hi]).
    bins = evaluation.calibration_bins(np.array([[0.5, 0.5]]), np.array([0]), num_bins=2)
    assert bins.count.tolist() == [1, 0]


def test_ece_perfect_and_worst():
    probabilities = np.tile([[0.8, 0.2]], (10, 1))
    labels = np.array([0] * 8 + [1] * 2)  # 80% right at confidence 0.8
    assert evaluation.expected_calibration_error(probabilities, labels) == pytest.approx(0.0, abs=1e-12)
    confident_wrong = np.tile([[1.0, 0.0]], (5, 1))
    assert evaluation.expected_calibration_error(confident_wrong, np.ones(5, int)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "probabilities, labels, message",
    [
        (np.ones((3,)), np.zeros(3, int), "probabilities"),
        (np.full((2, 2), 1.5), np.zeros(2, int), "probabilities"),
        (np.full((2, 2), 0.5), np.zeros(3, int), "labels"),
        (np.full((2, 2), 0.5), np.zeros(2), "labels"),
    ],
)
def test_ece_rejects_bad_inputs(probabilities, labels, message):
    with pytest.raises(ValueError, match=message):
        evaluation.expected_calibration_error(probabilities, labels)
    with pytest.raises(ValueError, match="num_bins"):
        evaluation.calibration_bins(np.full((2, 2), 0.5), np.zeros(2, int), num_bins=0)


def test_accuracy():
    assert evaluation.accuracy(np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]]), np.array([0, 1, 1])) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------
# Corruption errors.
# ---------------------------------------------------------------------------

MODEL = {"a": [0.1, 0.2], "b": [0.3, 0.3]}
BASELINE = {"a": [0.2, 0.2], "b": [0.2, 0.4]}


def test_mce_hand_computed():
    # CE_a = 0.3 / 0.4, CE_b = 0.6 / 0.6.
    assert evaluation.corruption_errors(MODEL, BASELINE) == pytest.approx({"a": 0.75, "b": 1.0})
    assert evaluation.mean_corruption_error(MODEL, BASELINE) == pytest.approx(0.875)
    assert evaluation.mean_corruption_error(BASELINE, BASELINE) == pytest.approx(1.0)


def test_relative_mce_hand_computed():
    # Clean errors 0.05 (model), 0.1 (baseline):
    # a: ((0.1 - 0.05) + (0.2 - 0.05)) / ((0.2 - 0.1) + (0.2 - 0.1)) = 0.2 / 0.2 = 1
    # b: ((0.3 - 0.05) * 2) / ((0.2 - 0.1) + (0.4 - 0.1)) = 0.5 / 0.4 = 1.25
    relative = evaluation.relative_corruption_errors(MODEL, 0.05, BASELINE, 0.1)
    assert relative == pytest.approx({"a": 1.0, "b": 1.25})
    assert evaluation.relative_mean_corruption_error(MODEL, 0.05, BASELINE, 0.1) == pytest.approx(1.125)


def test_mce_undefined_corruptions_are_nan_and_left_out():
    baseline = {"a": [0.0, 0.0], "b": [0.2, 0.4]}
    ce = evaluation.corruption_errors(MODEL, baseline)
    assert math.isnan(ce["a"]) and ce["b"] == pytest.approx(1.0)
    assert evaluation.mean_corruption_error(MODEL, baseline) == pytest.approx(1.0)
    # The baseline's error does not rise above its clean error on "a": relative CE_a is undefined.
    relative = evaluation.relative_corruption_errors(MODEL, 0.05, {"a": [0.1, 0.1], "b": [0.2, 0.4]}, 0.1)
    assert math.isnan(relative["a"]) and relative["b"] == pytest.approx(1.25)
    assert math.isnan(evaluation.mean_corruption_error(MODEL, {"a": [0, 0], "b": [0, 0]}))


def test_mce_rejects_mismatched_tables():
    with pytest.raises(ValueError, match="same corruptions"):
        evaluation.corruption_errors(MODEL, {"a": [0.1, 0.2]})
    with pytest.raises(ValueError, match="equal-length"):
        evaluation.corruption_errors({"a": [0.1]}, {"a": [0.1, 0.2]})


# ---------------------------------------------------------------------------
# kNN.
# ---------------------------------------------------------------------------


def _knn_numpy(train, train_labels, queries, k, temperature, num_classes):
    """Brute force, straight from the definition, float64 loops."""
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    predictions = []
    for q in queries:
        q = q / np.linalg.norm(q)
        similarities = [float(np.dot(q, t)) for t in train]
        order = sorted(range(len(train)), key=lambda i: -similarities[i])[: min(k, len(train))]
        votes = np.zeros(num_classes)
        for i in order:
            votes[train_labels[i]] += math.exp(similarities[i] / temperature)
        predictions.append(int(np.argmax(votes)))
    return np.array(predictions)


@pytest.mark.parametrize("k, temperature", [(1, 0.1), (5, 0.1), (20, 0.5), (200, 0.1), (7, 0.02)])
def test_knn_matches_numpy(k, temperature):
    rng = np.random.default_rng(k)
    train = rng.normal(size=(60, 8))
    train_labels = rng.integers(0, 4, size=60)
    queries = rng.normal(size=(25, 8))
    expected = _knn_numpy(train, train_labels, queries, k, temperature, 4)
    predicted = evaluation.knn_predict(train, train_labels, queries, k=k, temperature=temperature, batch_size=7)
    np.testing.assert_array_equal(predicted, expected)
    query_labels = rng.integers(0, 4, size=25)
    assert evaluation.knn_top1(train, train_labels, queries, query_labels, k=k, temperature=temperature) == (
        pytest.approx(np.mean(expected == query_labels))
    )


def test_knn_traces_once_for_repeated_calls_of_the_same_shapes():
    """An epoch-end monitor (experiments/report/monitor.py) calls it every epoch: no new trace per call."""
    rng = np.random.default_rng(3)
    train, train_labels, queries = rng.normal(size=(40, 6)), rng.integers(0, 3, 40), rng.normal(size=(9, 6))
    evaluation.knn_predict(train, train_labels, queries, k=5, num_classes=3)
    traces = evaluation._knn_classify.experimental_get_tracing_count()
    for _ in range(3):
        evaluation.knn_predict(rng.normal(size=(40, 6)), train_labels, rng.normal(size=(9, 6)), k=5, num_classes=3)
    assert evaluation._knn_classify.experimental_get_tracing_count() == traces


def test_knn_scale_invariant_and_exact_on_clusters():
    centres = np.eye(3, 5)
    rng = np.random.default_rng(0)
    train = np.repeat(centres, 10, axis=0) + 0.01 * rng.normal(size=(30, 5))
    labels = np.repeat(np.arange(3), 10)
    queries = 3.0 * centres + 0.01 * rng.normal(size=(3, 5))  # norms do not matter (cosine)
    assert evaluation.knn_top1(train, labels, queries, np.arange(3), k=200) == 1.0
    # num_classes may exceed the labels present.
    assert evaluation.knn_predict(train, labels, queries, num_classes=7, k=3).tolist() == [0, 1, 2]


def test_knn_rejects_bad_inputs():
    train, labels = np.ones((4, 3)), np.zeros(4, int)
    with pytest.raises(ValueError, match="same width"):
        evaluation.knn_predict(train, labels, np.ones((2, 2)))
    with pytest.raises(ValueError, match="train_labels"):
        evaluation.knn_predict(train, np.zeros(3, int), np.ones((2, 3)))
    with pytest.raises(ValueError, match="temperature"):
        evaluation.knn_predict(train, labels, np.ones((2, 3)), temperature=0)
    with pytest.raises(ValueError, match="`k`"):
        evaluation.knn_predict(train, labels, np.ones((2, 3)), k=0)
    with pytest.raises(ValueError, match="num_classes"):
        evaluation.knn_predict(train, np.array([0, 1, 2, 3]), np.ones((2, 3)), num_classes=3)


# ---------------------------------------------------------------------------
# Models: features, the kNN callback, corruption evaluation.
# ---------------------------------------------------------------------------


def _digits_datasets(n_train=96, n_test=40, size=8):
    train_images, train_labels = data.load_digits("train")
    test_images, test_labels = data.load_digits("test")
    train = data.from_arrays(train_images[:n_train], train_labels[:n_train])
    test = data.from_arrays(test_images[:n_test], test_labels[:n_test])
    return (
        train,
        data.make_eval_dataset(train, batch_size=32, image_size=size),
        data.make_eval_dataset(test, batch_size=16, image_size=size),
    )


def _supcon_model(size=8):
    encoder = encoders.build_encoder("small_cnn", (size, size, 1), width=0.25)
    return models.SupConModel(encoder, layers.ProjectionHead((16,), 8))


def test_extract_features_outputs():
    _, train_plain, _ = _digits_datasets()
    model = _supcon_model()
    representation, labels = evaluation.extract_features(model, train_plain)
    embedding, _ = evaluation.extract_features(model, train_plain, output="embedding")
    assert representation.shape[0] == 96 and labels.shape == (96,)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    probe = models.LinearProbe(model.encoder, 10)
    from_probe, _ = evaluation.extract_features(probe, train_plain)
    np.testing.assert_allclose(from_probe, representation, atol=1e-6)
    with pytest.raises(ValueError, match="projection head"):
        evaluation.extract_features(probe, train_plain, output="embedding")
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        evaluation.extract_features(model, [1, 2])


def test_knn_monitor_logs_every_n_epochs():
    train, train_plain, test_plain = _digits_datasets()
    model = _supcon_model()
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    views = data.make_multiview_dataset(
        train, batch_size=32, num_views=2, augment=lambda images, seed: tf.cast(images, tf.float32) / 255.0
    )
    monitor = evaluation.KNNMonitor(train_plain, test_plain, every=2, k=20)
    history = model.fit(views, epochs=3, callbacks=[monitor], verbose=0, shuffle=False)
    logged = history.history["knn_top1"]
    assert len(logged) == 3
    assert math.isnan(logged[0]) and 0.0 <= logged[1] <= 1.0 and 0.0 <= logged[2] <= 1.0  # epoch 3 = last
    assert sorted(monitor.results) == [1, 2]
    # The last value is the kNN top-1 of the final encoder, computed by hand.
    train_features, train_labels = evaluation.extract_features(model, train_plain)
    test_features, test_labels = evaluation.extract_features(model, test_plain)
    assert logged[2] == pytest.approx(evaluation.knn_top1(train_features, train_labels, test_features, test_labels, k=20))
    with pytest.raises(ValueError, match="every"):
        evaluation.KNNMonitor(train_plain, test_plain, every=0)


class FixedClassifier(keras.Model):
    """Logits = a fixed linear map of the flattened image (no training needed)."""

    def __init__(self, size, num_classes=10, seed=0):
        super().__init__(name=f"fixed_classifier_{seed}")
        rng = np.random.default_rng(seed)
        self.kernel = tf.constant(rng.normal(size=(size * size, num_classes)), tf.float32)

    def call(self, images, training=False):
        return tf.matmul(tf.reshape(images, [tf.shape(images)[0], -1]), self.kernel) * 4.0


def test_evaluate_corruptions_matches_manual_and_is_deterministic():
    _, _, test_plain = _digits_datasets(size=8)
    model = FixedClassifier(8)
    names = ("gaussian_noise", "contrast")
    result = evaluation.evaluate_corruptions(model, test_plain, corruptions=names, severities=(1, 5), seed=3)
    assert set(result.errors) == set(names) and result.errors["contrast"].shape == (2,)
    probabilities, labels = evaluation.predict_probabilities(model, test_plain)
    assert result.clean_error == pytest.approx(1 - evaluation.accuracy(probabilities, labels))
    assert result.clean_ece == pytest.approx(evaluation.expected_calibration_error(probabilities, labels))
    noisy = corruptions.corrupt_dataset(test_plain, "gaussian_noise", 5, seed=3)
    probabilities, labels = evaluation.predict_probabilities(model, noisy)
    assert result.errors["gaussian_noise"][1] == pytest.approx(1 - evaluation.accuracy(probabilities, labels))
    assert result.eces["gaussian_noise"][1] == pytest.approx(evaluation.expected_calibration_error(probabilities, labels))
    again = evaluation.evaluate_corruptions(model, test_plain, corruptions=names, severities=(1, 5), seed=3)
    np.testing.assert_array_equal(again.errors["gaussian_noise"], result.errors["gaussian_noise"])
    by_severity = result.accuracy_by_severity()
    assert by_severity.shape == (3,) and by_severity[0] == pytest.approx(1 - result.clean_error)
    assert result.ece_by_severity().shape == (3,)
    assert set(result.to_dict()) == {"clean_error", "clean_ece", "errors", "eces", "severities"}
    # Several models in one call: same numbers as one at a time.
    other = FixedClassifier(8, seed=1)
    both = evaluation.evaluate_corruptions({"a": model, "b": other}, test_plain, corruptions=names, severities=(1, 5), seed=3)
    np.testing.assert_array_equal(both["a"].errors["gaussian_noise"], result.errors["gaussian_noise"])
    alone = evaluation.evaluate_corruptions(other, test_plain, corruptions=names, severities=(1, 5), seed=3)
    np.testing.assert_array_equal(both["b"].eces["contrast"], alone.eces["contrast"])
    assert both["b"].clean_error == alone.clean_error
    with pytest.raises(ValueError, match="corruptions"):
        evaluation.evaluate_corruptions(model, test_plain, corruptions=("fog",))
    with pytest.raises(ValueError, match="severities"):
        evaluation.evaluate_corruptions(model, test_plain, severities=(0,))
