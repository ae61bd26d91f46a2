"""Cross-replica SupCon: a 2-replica MirroredStrategy step equals the 1-device step on the same global batch."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import distribute
from supcon_tf.encoders import build_encoder
from supcon_tf.layers import ProjectionHead
from supcon_tf.models import SupConModel
from helpers import with_loss_config

IMAGE_SHAPE = (8, 8, 1)
GLOBAL_BATCH = 8


def _two_cpu_strategy():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    return distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])


def _make_model(weights=None, **kwargs):
    keras.utils.set_random_seed(0)
    # Synchronized BN: batch statistics over the global batch, as on one device.
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25, synchronized_bn=True)
    model = SupConModel(encoder, ProjectionHead((16,), 8), **with_loss_config(kwargs))
    model.build((None,) + IMAGE_SHAPE)
    if weights is not None:
        model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.5))
    return model


def _dataset(views):
    rng = np.random.default_rng(0)
    x = rng.random((GLOBAL_BATCH, views) + IMAGE_SHAPE).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 3], np.int32)  # positives straddle the replica split
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH, drop_remainder=True)


def _one_step(strategy, weights, views, **kwargs):
    with strategy.scope():
        model = _make_model(weights, **kwargs)
    return _fit_one_step(model, views)


def _fit_one_step(model, views):
    history = model.fit(_dataset(views), epochs=1, shuffle=False, verbose=0)
    return [w for w in model.get_weights()], history.history["loss"][0]


def _single_device_step(views, **kwargs):
    """`(initial weights, weights after one step, loss)` on one device: the model whose initial weights the
    mirrored run copies takes the step itself (a second model with the same weights would only repeat it)."""
    model = _make_model(**kwargs)
    initial = model.get_weights()
    return (initial, *_fit_one_step(model, views))


CASES = {
    "supcon": dict(views=2),
    "simclr": dict(views=2, method="simclr", temperature=0.5),
    "three_views": dict(views=3),
    "contrast_mode_one": dict(views=2, contrast_mode="one"),
}


def _max_weight_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_replicas_match_one_device(case):
    kwargs = dict(CASES[case])
    views = kwargs.pop("views")
    initial, single_weights, single_loss = _single_device_step(views, **kwargs)
    mirrored_weights, mirrored_loss = _one_step(_two_cpu_strategy(), initial, views, **kwargs)
    assert _max_weight_difference(initial, single_weights) > 1e-3  # the step did something
    difference = _max_weight_difference(single_weights, mirrored_weights)
    print(f"{case}: max |w_mirrored - w_single| = {difference:.3g}")
    assert difference <= 1e-5
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5)


def test_without_gathering_the_step_differs():
    initial, single_weights, single_loss = _single_device_step(2)
    local_weights, local_loss = _one_step(_two_cpu_strategy(), initial, 2, cross_replica=False)
    difference = _max_weight_difference(single_weights, local_weights)
    print(f"no gathering: max |w_mirrored - w_single| = {difference:.3g}")
    assert difference > 1e-3
    assert abs(local_loss - single_loss) > 1e-3


def test_gather_global_offsets_and_order():
    strategy = _two_cpu_strategy()

    def replica_fn():
        context = tf.distribute.get_replica_context()
        rid = tf.cast(context.replica_id_in_sync_group, tf.float32)
        local = tf.fill([3, 2], rid)
        gathered = distribute.gather_global(local, tf.fill([3], rid))
        return gathered.features, gathered.labels, gathered.offset, distribute.all_reduce_sum(rid + 1.0)

    features, labels, offsets, total = strategy.run(replica_fn)
    for replica, (f, lab, off, tot) in enumerate(
        zip(*(strategy.experimental_local_results(t) for t in (features, labels, offsets, total)))
    ):
        np.testing.assert_array_equal(f.numpy()[:, 0], [0, 0, 0, 1, 1, 1])
        np.testing.assert_array_equal(lab.numpy(), [0, 0, 0, 1, 1, 1])
        assert int(off) == 3 * replica
        assert float(tot) == 3.0


def test_gather_global_single_replica_is_identity_and_validates():
    x = tf.ones([4, 3])
    gathered = distribute.gather_global(x)
    assert gathered.features is x or np.array_equal(gathered.features.numpy(), x.numpy())
    assert int(gathered.offset) == 0 and int(gathered.num_local) == 4 and gathered.labels is None
    with pytest.raises(ValueError, match="features"):
        distribute.gather_global(tf.constant(1.0))


def test_mirrored_requires_equal_replica_batches():
    strategy = _two_cpu_strategy()
    with strategy.scope():
        model = _make_model()
    rng = np.random.default_rng(0)
    x = rng.random((7, 2) + IMAGE_SHAPE).astype(np.float32)
    # No drop_remainder: the last batch of 3 splits 2 + 1 over the replicas.
    ds = tf.data.Dataset.from_tensor_slices((x, np.zeros(7, np.int32))).batch(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="drop_remainder"):
        model.fit(ds, epochs=1, verbose=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="horovod"), "name"),
        (dict(name="multi_worker", communication="mpi"), "communication"),
        (dict(name="tpu"), "tpu"),
        (dict(name="mirrored", devices=[]), "devices"),
    ],
)
def test_get_strategy_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distribute.get_strategy(**kwargs)


def test_multi_worker_requires_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.get_strategy("multi_worker")


def test_named_strategies_build_on_cpu():
    assert distribute.get_strategy("default").num_replicas_in_sync == 1
    assert distribute.get_strategy("one_device").num_replicas_in_sync == 1
    assert _two_cpu_strategy().num_replicas_in_sync == 2


def test_shuffled_two_step_mirrored_run_sees_the_same_batches_as_one_device():
    # Keras' own pre-build pass would start an extra iteration of the dataset
    # and reshuffle it; MultiWorkerFitMixin reads the element spec instead.
    def run(strategy, weights):
        keras.utils.set_random_seed(0)
        rng = np.random.default_rng(1)
        x = rng.random((32, 2) + IMAGE_SHAPE).astype(np.float32)
        y = (np.arange(32) % 5).astype(np.int32)
        ds = (
            tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(32, seed=3, reshuffle_each_iteration=True)
            .batch(GLOBAL_BATCH, drop_remainder=True)
        )
        with strategy.scope():
            model = _make_model(weights)
        model.fit(ds, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0)
        return model.get_weights()

    initial = _make_model().get_weights()
    single = run(tf.distribute.get_strategy(), initial)
    mirrored = run(_two_cpu_strategy(), initial)
    difference = _max_weight_difference(single, mirrored)
    print(f"shuffled 2 steps: max |w_mirrored - w_single| = {difference:.3g}")
    assert difference <= 1e-5

