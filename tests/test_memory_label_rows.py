"""MemoryQueue label rows beyond class ids: multi-hot `[K, classes]` and continuous `[K]` / `[K, k]` float labels,
written by `update`, read back in order, and used by the named weightings against the float64 reference."""

import keras
import numpy as np
import pytest

from loss_reference import gaussian_weight, jaccard_weight, unit, weighted_reference
from supcon_tf import memory
from supcon_tf.losses import supcon_per_anchor_loss

BANDWIDTH = 0.7


def _gaussian(a, b):
    return gaussian_weight(a, b, BANDWIDTH)


def _labels(kind, rng, n):
    if kind == "multi_hot":
        rows = (rng.random((n, 4)) < 0.4).astype(np.float32)
        rows[np.arange(n), rng.integers(0, 4, n)] = 1.0  # every sample carries a label
        return rows
    if kind == "continuous":
        return rng.uniform(0.0, 2.0, n).astype(np.float32)
    return rng.uniform(0.0, 2.0, (n, 2)).astype(np.float32)  # "vector": [n, 2]


LAYOUTS = {"multi_hot": ((4,), "jaccard"), "continuous": ((), "gaussian"), "vector": ((2,), "gaussian")}


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_queue_keeps_float_label_rows_in_order_through_update(kind):
    rng = np.random.default_rng(1)
    queue = memory.MemoryQueue(10, label_shape=LAYOUTS[kind][0], label_dtype="float32")
    queue.build((None, 3))
    written_features, written_labels = [], []
    for _ in range(3):  # 3 steps of 2 samples x 2 views = 12 entries > 10: the queue wraps
        embeddings, labels = unit(rng, 2, 2, 3).astype(np.float32), _labels(kind, rng, 2)
        queue.update(embeddings, labels=labels)
        written_features.append(embeddings.reshape(4, 3))
        written_labels.append(np.repeat(labels, 2, axis=0))  # each view carries its sample's row
    features, labels = queue.contents()
    np.testing.assert_allclose(features.numpy(), np.concatenate(written_features)[-10:], atol=0)
    np.testing.assert_array_equal(labels.numpy(), np.concatenate(written_labels)[-10:])
    assert labels.dtype == "float32" and labels.shape == (10, *LAYOUTS[kind][0])


@pytest.mark.parametrize("kind", sorted(LAYOUTS))
@pytest.mark.parametrize("implementation", ["dense", "blockwise"])
def test_queue_label_rows_give_the_float64_weighted_loss(kind, implementation):
    rng = np.random.default_rng(7)
    label_shape, rule = LAYOUTS[kind]
    queue = memory.MemoryQueue(6, label_shape=label_shape, label_dtype="float32")
    queue.build((None, 3))
    queue.update(unit(rng, 3, 2, 3).astype(np.float32), labels=_labels(kind, rng, 3))
    queue_features, queue_labels = queue.read()
    z, labels = unit(rng, 5, 2, 3), _labels(kind, rng, 5)
    options = dict(positive_weighting="jaccard") if rule == "jaccard" else dict(
        label_kernel="gaussian", kernel_bandwidth=BANDWIDTH
    )
    result = supcon_per_anchor_loss(
        z.astype(np.float32), labels, temperature=0.2, queue_features=queue_features, queue_labels=queue_labels,
        implementation=implementation, block_size=4, **options,
    )
    weigh = jaccard_weight if rule == "jaccard" else _gaussian
    q_labels = queue_labels.numpy().astype(np.float64)
    weights = np.array([[weigh(a, b) for b in labels.astype(np.float64)] for a in labels.astype(np.float64)])
    queue_weights = np.array([[weigh(a, b) for b in q_labels] for a in labels.astype(np.float64)])
    expected, counts, _ = weighted_reference(
        z, weights, queue_features.numpy().astype(np.float64), queue_weights, temperature=0.2
    )
    np.testing.assert_array_equal(result.has_positive.numpy(), counts)
    np.testing.assert_allclose(result.loss.numpy(), expected, rtol=2e-5, atol=1e-6)


def test_float_label_queue_round_trips_its_config_and_state():
    queue = memory.MemoryQueue(4, label_shape=(3,), label_dtype="float32", name="q")
    queue.build((None, 2))
    queue.enqueue(np.ones((2, 2), np.float32), np.array([[1, 0, 1], [0, 1, 0]], np.float32))
    clone = memory.MemoryQueue.from_config(queue.get_config())
    assert clone.label_shape == (3,) and clone.label_dtype == "float32"
    clone.build((None, 2))
    clone.set_weights(queue.get_weights())
    np.testing.assert_array_equal(clone.entries(only_in_use=False)[1].numpy(), [[1, 0, 1], [0, 1, 0]])
    assert "label_shape" not in memory.MemoryQueue(4).get_config()  # the default config is unchanged
    assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(queue)).label_shape == (3,)


def test_empty_label_rows_and_unlabelled_updates_hold_the_empty_label():
    queue = memory.MemoryQueue(4, label_shape=(2,), label_dtype="float32")
    queue.build((None, 2))
    np.testing.assert_array_equal(queue.labels.numpy(), np.full((4, 2), memory.EMPTY_LABEL))
    queue.update(np.ones((1, 2, 2), np.float32))
    np.testing.assert_array_equal(queue.entries(only_in_use=False)[1].numpy(), np.full((2, 2), memory.EMPTY_LABEL))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(label_dtype="float16"), "label_dtype"),
        (dict(label_shape=(0,)), "label_shape"),
        (dict(label_shape=(2, 2)), "label_shape"),
        (dict(label_shape=3), "label_shape"),
    ],
)
def test_bad_label_layouts_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        memory.MemoryQueue(4, **kwargs)


def test_labels_that_do_not_fit_the_queue_are_refused():
    ids = memory.MemoryQueue(4)
    ids.build((None, 2))
    with pytest.raises(ValueError, match="label_dtype='float32'"):
        ids.enqueue(np.ones((2, 2), np.float32), np.array([0.5, 1.5], np.float32))
    rows = memory.MemoryQueue(4, label_shape=(3,), label_dtype="float32")
    rows.build((None, 2))
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        rows.enqueue(np.ones((2, 2), np.float32), np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[n, 3\]"):
        rows.enqueue(np.ones((2, 2), np.float32), np.ones((2,), np.float32))
