"""distribute.cross_replica_mean: SupConModel's one cross-replica loss reduction, on one and on two replicas."""

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import distribute
from supcon_tf.losses import supcon_loss, supcon_per_anchor_loss


def _two_cpu_strategy():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    return distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])


def _local(strategy, values):
    return [t.numpy() for t in strategy.experimental_local_results(values)]


def test_one_replica_is_the_plain_mean():
    losses = tf.Variable([0.5, 1.5, 0.0, 2.0])
    has_positive = tf.constant([1.0, 1.0, 0.0, 1.0])
    with tf.GradientTape() as tape:
        share, global_mean = distribute.cross_replica_mean(tf.reduce_sum(losses * has_positive), tf.reduce_sum(has_positive))
    assert float(share) == float(global_mean) == pytest.approx(4.0 / 3.0, rel=1e-7)
    np.testing.assert_allclose(tape.gradient(share, losses).numpy(), has_positive.numpy() / 3.0, rtol=1e-7)
    # No anchor with a positive anywhere: 0, not NaN.
    assert [float(v) for v in distribute.cross_replica_mean(tf.constant(0.0), tf.constant(0.0))] == [0.0, 0.0]


@pytest.mark.parametrize(
    "has_positive",
    [
        pytest.param([[1, 1, 0, 1], [1, 0, 1, 1]], id="equal_counts"),
        pytest.param([[1, 1, 1, 1], [0, 1, 0, 0]], id="unequal_counts"),
        pytest.param([[1, 1, 0, 1], [0, 0, 0, 0]], id="one_replica_without_positives"),
    ],
)
def test_two_replicas_give_exactly_the_global_mean(has_positive):
    strategy = _two_cpu_strategy()
    rng = np.random.default_rng(0)
    losses = rng.random((2, 4)).astype(np.float32) * 3
    mask = np.asarray(has_positive, np.float32)
    expected = float(np.sum(losses.astype(np.float64) * mask) / mask.sum())

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            local_losses, local_mask = tf.gather(losses, replica), tf.gather(mask, replica)
            return distribute.cross_replica_mean(tf.reduce_sum(local_losses * local_mask), tf.reduce_sum(local_mask))

        return strategy.run(replica_fn)

    shares, global_means = step()
    shares, global_means = _local(strategy, shares), _local(strategy, global_means)
    for replica in range(2):
        np.testing.assert_allclose(global_means[replica], expected, rtol=1e-6)
        # The local sum over the GLOBAL count: the one 1/num_replicas scaling.
        np.testing.assert_allclose(shares[replica], np.sum(losses[replica] * mask[replica]) / mask.sum(), rtol=1e-6)
    np.testing.assert_allclose(sum(shares), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "views, labels",
    [
        pytest.param(2, [0, 1, 2, 0, 1, 2, 3, 4], id="equal_counts"),
        # One view: an anchor's positives are the other samples of its class; replica 0 has 3 anchors
        # with a positive (one of them only through replica 1), replica 1 has 1.
        pytest.param(1, [0, 1, 2, 0, 1, 5, 6, 7], id="unequal_counts"),
    ],
)
def test_gradients_summed_over_replicas_equal_the_one_device_gradient(views, labels):
    strategy = _two_cpu_strategy()
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, views, 5)).astype(np.float32)
    labels = np.asarray(labels, np.int32)
    initial = rng.normal(size=(5, 4)).astype(np.float32)

    def embed(inputs, weights):
        return tf.math.l2_normalize(tf.einsum("bvi,io->bvo", inputs, weights), axis=-1)

    with strategy.scope():
        weights = tf.Variable(initial)

    @tf.function
    def step():
        def replica_fn():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            local = tf.reshape(tf.gather(tf.reshape(x, (2, 4, views, 5)), replica), (4, views, 5))
            local_labels = tf.gather(tf.reshape(labels, (2, 4)), replica)
            with tf.GradientTape() as tape:
                gathered = distribute.gather_global(embed(local, weights), local_labels)
                per_anchor = supcon_per_anchor_loss(
                    gathered.features, gathered.labels, anchor_offset=gathered.offset,
                    num_anchor_samples=gathered.num_local,
                )
                count = tf.reduce_sum(tf.cast(per_anchor.has_positive, tf.float32))
                share, global_loss = distribute.cross_replica_mean(tf.reduce_sum(per_anchor.loss), count)
            return tape.gradient(share, weights), global_loss, count

        return strategy.run(replica_fn)

    gradients, global_losses, counts = (_local(strategy, t) for t in step())
    if views == 1:
        assert [float(c) for c in counts] == [3.0, 1.0]
    one_device = tf.Variable(initial)
    with tf.GradientTape() as tape:
        expected_loss = supcon_loss(embed(x, one_device), labels)
    expected_gradient = tape.gradient(expected_loss, one_device).numpy()
    for global_loss in global_losses:
        np.testing.assert_allclose(global_loss, expected_loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(gradients[0] + gradients[1], expected_gradient, atol=1e-6)
    assert np.abs(gradients[0] - expected_gradient).max() > 1e-4  # a replica's own gradient is only its share
