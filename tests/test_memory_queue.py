"""Memory queue and momentum encoder of SupConModel: exact losses, FIFO contents, checkpoints, 2-replica equality."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import distribute, memory
from supcon_tf.config import RunConfig
from supcon_tf.encoders import build_encoder
from supcon_tf.layers import ProjectionHead
from supcon_tf.losses import supcon_loss
from supcon_tf.models import SupConModel
from helpers import assert_serialization_roundtrip, with_loss_config
from loss_reference import reference_loss

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("memory_queue")

IMAGE_SHAPE = (8, 8, 1)
DIM = 8


def _model(synchronized_bn=False, hidden_dims=(16,), **kwargs):
    keras.utils.set_random_seed(0)
    encoder = build_encoder("small_cnn", IMAGE_SHAPE, width=0.25, synchronized_bn=synchronized_bn)
    return SupConModel(encoder, ProjectionHead(hidden_dims, DIM), **with_loss_config(kwargs))


def _batches(num_batches, batch=4, views=2, seed=0):
    """Distinct labels per sample (0, 1, 2, ...), so queue contents can be traced back."""
    rng = np.random.default_rng(seed)
    x = rng.random((num_batches * batch, views) + IMAGE_SHAPE).astype(np.float32)
    y = (np.arange(num_batches * batch) % 3).astype(np.int32)
    return x, y


def _fit(model, x, y, batch, lr=0.0, **fit_kwargs):
    if not model.compiled:
        model.compile(optimizer=keras.optimizers.SGD(lr))
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch, drop_remainder=True)
    return model.fit(ds, epochs=1, shuffle=False, verbose=0, **fit_kwargs).history["loss"]


def _weights(variables):
    return [v.numpy().copy() for v in variables]


def _random_queue_entries(rng, count, num_classes=3):
    q = rng.normal(size=(count, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    return q, rng.integers(0, num_classes, count)


# -- queue_size=0 is the plain model ---------------------------------------------------------------


def test_queue_size_zero_is_exactly_the_plain_step_and_an_empty_queue_changes_nothing():
    x, y = _batches(1, batch=8)
    plain, zero = _model(), _model(queue_size=0, queue_warmup_steps=0, key_momentum=None)
    empty = _model(queue_size=32)
    assert zero.memory is None and zero.key_encoder is None
    assert [v.shape for v in zero.weights] == [v.shape for v in plain.weights]  # no extra state
    with tf.GradientTape() as tape:
        loss = supcon_loss(zero.embed_views(x, training=True), y)
    grads = tape.gradient(loss, zero.trainable_variables)
    before = _weights(zero.trainable_variables)
    logged = {}
    for name, model in (("plain", plain), ("zero", zero), ("empty", empty)):
        logged[name] = _fit(model, x, y, batch=8, lr=0.1)[0]
    assert logged["zero"] == logged["plain"]
    np.testing.assert_allclose(logged["zero"], loss.numpy(), rtol=1e-6)
    np.testing.assert_allclose(logged["empty"], logged["plain"], rtol=1e-6)
    for var, plain_var, empty_var, old, grad in zip(
        zero.trainable_variables, plain.trainable_variables, empty.trainable_variables, before, grads
    ):
        np.testing.assert_array_equal(var.numpy(), plain_var.numpy())
        np.testing.assert_allclose(var.numpy(), old - 0.1 * grad.numpy(), atol=1e-6, err_msg=var.path)
        np.testing.assert_allclose(empty_var.numpy(), var.numpy(), atol=1e-7, err_msg=var.path)


# -- the loss with a queue --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["supcon", "simclr"])
def test_loss_and_step_with_a_partly_filled_queue_match_the_float64_reference(method):
    model = _model(method=method, queue_size=10)
    # Earlier embeddings of the same network: close to the batch's, so they matter.
    q = model.embed_views(_batches(1, batch=3, seed=7)[0], training=True).numpy().reshape(6, DIM)
    q_labels = np.array([0, 0, 1, 1, 2, 2])
    model.memory.enqueue(q, q_labels)  # 6 of 10 slots: the other 4 must not count
    x, y = _batches(1, batch=6)
    labels = y if method == "supcon" else None
    z = model.embed_views(x, training=True)
    _, _, expected = reference_loss(z.numpy(), labels, temperature=0.1, queue_features=q,
                                 queue_labels=q_labels if labels is not None else None)
    # The step's update is the gradient with the queue as constants.
    queue_constant = tf.constant(q)
    with tf.GradientTape() as tape:
        loss = supcon_loss(
            model.embed_views(x, training=True), labels, queue_features=queue_constant,
            queue_labels=None if labels is None else q_labels,
        )
    grads = tape.gradient(loss, model.trainable_variables)
    before = _weights(model.trainable_variables)
    logged = _fit(model, x, y, batch=6, lr=0.1)[0]
    np.testing.assert_allclose(logged, expected, rtol=1e-5)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    for var, old, grad in zip(model.trainable_variables, before, grads):
        np.testing.assert_allclose(var.numpy(), old - 0.1 * grad.numpy(), atol=1e-6, err_msg=var.path)
    # The queue made a difference, and the plain loss is not what was logged.
    assert abs(logged - reference_loss(z.numpy(), labels, temperature=0.1)[2]) > 1e-3


@pytest.mark.parametrize("filled", [3000, 4096])
def test_a_large_queue_filling_or_full_gives_the_dense_loss_and_step(filled):
    # 8 + 4096 contrast rows: a full queue is passed whole (static shape, so the loss may go
    # blockwise); a filling one as its written slots. Both must be the dense loss with constants.
    model = _model(queue_size=4096)
    rng = np.random.default_rng(2)
    base = model.embed_views(_batches(1, batch=4, seed=9)[0], training=True).numpy().reshape(8, DIM)
    q = base[rng.integers(0, 8, filled)] + 0.05 * rng.normal(size=(filled, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q_labels = rng.integers(0, 3, filled)
    model.memory.enqueue(q, q_labels)
    x, y = _batches(1, batch=4)
    with tf.GradientTape() as tape:
        loss = supcon_loss(
            model.embed_views(x, training=True), y, queue_features=tf.constant(q), queue_labels=q_labels,
            implementation="dense",
        )
    grads = tape.gradient(loss, model.trainable_variables)
    before = _weights(model.trainable_variables)
    logged = _fit(model, x, y, batch=4, lr=0.1)[0]
    np.testing.assert_allclose(logged, loss.numpy(), rtol=1e-5)
    for var, old, grad in zip(model.trainable_variables, before, grads):
        np.testing.assert_allclose(var.numpy(), old - 0.1 * grad.numpy(), atol=1e-6, err_msg=var.path)


@pytest.mark.slow
def test_xla_compiled_steps_match_plain_graph_steps_while_the_queue_fills_and_when_full():
    x, y = _batches(4, batch=4)  # queue of 16, 8 entries per step: empty, half, full, full (wrapped)
    runs = {}
    for jit in (False, True):
        model = _model(queue_size=16, key_momentum=0.9)
        model.compile(optimizer=keras.optimizers.SGD(0.2), jit_compile=jit)
        losses = [_fit(model, x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4], batch=4)[0] for i in range(4)]
        runs[jit] = losses, model.get_weights()
    np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-4)
    for a, b in zip(runs[False][1], runs[True][1]):
        np.testing.assert_allclose(b, a, atol=1e-4)


def test_queue_joins_the_loss_only_after_the_warmup():
    x, y = _batches(3, batch=4)
    plain, warm = _model(), _model(queue_size=64, queue_warmup_steps=2)
    for step in range(3):  # lr = 0 and one step per fit: the logged loss is that step's loss
        batch = slice(4 * step, 4 * step + 4)
        plain_loss, warm_loss = (_fit(m, x[batch], y[batch], batch=4)[0] for m in (plain, warm))
        if step < 2:
            np.testing.assert_allclose(warm_loss, plain_loss, rtol=1e-6)
        else:
            assert abs(warm_loss - plain_loss) > 1e-3
    assert int(warm.memory.filled.numpy()) == 3 * 4 * 2  # written during the warm-up too


def test_memory_queue_entries_are_empty_during_the_warmup():
    queue = memory.MemoryQueue(8, warmup_steps=2)
    queue.build((None, DIM))
    for step in range(4):
        features, labels = queue.entries()
        assert features.shape[0] == labels.shape[0] == (0 if step < 2 else min(8, 4 * step))
        assert bool(queue.in_use()) == (step >= 2)
        assert queue.entries(only_in_use=False)[0].shape[0] == min(8, 4 * step)
        queue.enqueue(np.ones((4, DIM), np.float32), np.arange(4))


# -- FIFO contents -----------------------------------------------------------------------------------


def test_queue_holds_exactly_the_last_k_entries_after_n_steps():
    # 5 steps x 4 samples x 2 views = 40 entries through a queue of 12: wraps around three times.
    num_steps, batch, size = 5, 4, 12
    model = _model(queue_size=size)
    x, _ = _batches(num_steps, batch=batch)
    y = np.arange(num_steps * batch, dtype=np.int32)  # a label per sample identifies it
    _fit(model, x, y, batch=batch)  # lr = 0: the embeddings of every step are reproducible
    written_features = np.concatenate(
        [model.embed_views(x[i * batch : (i + 1) * batch], training=True).numpy().reshape(-1, DIM) for i in range(num_steps)]
    )
    written_labels = np.repeat(y, 2)  # sample-major: s0 v0, s0 v1, s1 v0, ...
    features, labels = model.memory.contents()
    np.testing.assert_allclose(features.numpy(), written_features[-size:], atol=1e-6)
    np.testing.assert_array_equal(labels.numpy(), written_labels[-size:])
    assert int(model.memory.filled.numpy()) == size
    assert int(model.memory.position.numpy()) == (num_steps * batch * 2) % size
    assert int(model.memory.steps.numpy()) == num_steps
    slot_features, slot_labels = model.memory.entries()
    assert sorted(slot_labels.numpy().tolist()) == sorted(written_labels[-size:].tolist())
    assert slot_features.shape == (size, DIM)


def test_memory_queue_enqueue_counts_wrap_and_oversized_writes():
    queue = memory.MemoryQueue(5)
    queue.build((None, 2))
    features, labels = queue.entries()
    assert features.shape == (0, 2) and labels.shape == (0,)
    assert set(queue.labels.numpy().tolist()) == {memory.EMPTY_LABEL}
    rows = lambda a, b: np.stack([np.arange(a, b), -np.arange(a, b)], axis=1).astype(np.float32)  # noqa: E731
    queue.enqueue(rows(0, 3), np.arange(0, 3))
    assert int(queue.filled.numpy()) == 3 and int(queue.position.numpy()) == 3
    np.testing.assert_array_equal(queue.contents()[1].numpy(), [0, 1, 2])
    queue.enqueue(rows(3, 7), np.arange(3, 7))  # wraps
    np.testing.assert_array_equal(queue.contents()[1].numpy(), [2, 3, 4, 5, 6])
    np.testing.assert_array_equal(queue.contents()[0].numpy(), rows(2, 7))
    queue.enqueue(rows(7, 19), np.arange(7, 19))  # more than the queue holds: the last 5 stay
    np.testing.assert_array_equal(queue.contents()[1].numpy(), [14, 15, 16, 17, 18])
    np.testing.assert_array_equal(queue.contents()[0].numpy(), rows(14, 19))
    assert int(queue.filled.numpy()) == 5 and int(queue.position.numpy()) == 19 % 5
    assert int(queue.steps.numpy()) == 3


def test_memory_queue_works_inside_an_xla_compiled_function():
    queue = memory.MemoryQueue(6)
    queue.build((None, DIM))
    rng = np.random.default_rng(0)
    q, q_labels = _random_queue_entries(rng, 4)
    queue.enqueue(q, q_labels)
    z, _ = _random_queue_entries(rng, 8)
    z = z.reshape(4, 2, DIM)
    y = np.array([0, 1, 2, 0])

    def loss():
        features, labels = queue.entries()
        return supcon_loss(z, y, queue_features=features, queue_labels=labels)

    _, _, expected = reference_loss(z, y, temperature=0.1, queue_features=q, queue_labels=q_labels)
    np.testing.assert_allclose(tf.function(loss, jit_compile=True)().numpy(), expected, rtol=1e-5)


# -- momentum encoder -------------------------------------------------------------------------------


def test_momentum_encoder_follows_the_online_weights_and_fills_the_queue():
    m = 0.9
    model = _model(queue_size=64, key_momentum=m)
    online = model.encoder.weights + model.head.weights
    keys = model.key_encoder.weights + model.key_head.weights
    for o, k in zip(online, keys):
        np.testing.assert_array_equal(o.numpy(), k.numpy())  # starts as a copy
    assert not any(k.trainable for k in keys)
    trainable_ids = {id(v) for v in model.trainable_variables}
    assert not any(id(k) in trainable_ids for k in keys)
    x, y = _batches(1, batch=8)
    online_before = _weights(online)
    key_stats_before = {k.path: k.numpy().copy() for o, k in zip(online, keys) if not o.trainable}
    _fit(model, x, y, batch=8, lr=0.5)
    for o, k, before in zip(online, keys, online_before):
        if o.trainable:
            np.testing.assert_allclose(k.numpy(), m * before + (1 - m) * o.numpy(), atol=1e-6, err_msg=k.path)
            assert not np.allclose(o.numpy(), before)
    # Batch-norm moving statistics of the key network are its own (updated by its training-mode passes).
    assert key_stats_before and all(
        not np.allclose(k.numpy(), key_stats_before[k.path]) for o, k in zip(online, keys) if not o.trainable
    )
    # The queue holds the key network's embeddings of the step's views, not the online ones.
    features, labels = model.memory.contents()
    np.testing.assert_allclose(features.numpy(), model.embed_keys(x).numpy().reshape(-1, DIM), atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), np.repeat(y, 2))
    assert not np.allclose(features.numpy(), model.embed_views(x, training=True).numpy().reshape(-1, DIM), atol=1e-3)


def test_compile_takes_the_key_networks_back_from_the_optimizer():
    model = _model(queue_size=16, key_momentum=0.99)
    model.trainable = True  # the layer setter marks every variable trainable again
    model.compile(optimizer="sgd")
    assert not any(k.trainable for k in model.key_encoder.weights + model.key_head.weights)
    assert len(model.trainable_variables) == len(_model().trainable_variables)


# -- saving and restoring ---------------------------------------------------------------------------


def _trained_model_with_memory(**kwargs):
    model = _model(queue_size=20, queue_warmup_steps=1, key_momentum=0.8, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.3))
    x, y = _batches(3, batch=4)
    _fit(model, x, y, batch=4, lr=0.3)
    return model


def _memory_state(model):
    return [v.numpy().copy() for v in model.memory.weights + model.key_encoder.weights + model.key_head.weights]


def test_get_config_and_keras_file_round_trip_restore_queue_and_momentum_encoder(tmp_path):
    model = _trained_model_with_memory()
    clone = assert_serialization_roundtrip(model, np.random.rand(2, *IMAGE_SHAPE).astype(np.float32))
    assert (clone.queue_size, clone.queue_warmup_steps, clone.key_momentum) == (20, 1, 0.8)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for expected, restored in zip(_memory_state(model), _memory_state(loaded)):
        np.testing.assert_array_equal(restored, expected)
    assert int(loaded.memory.filled.numpy()) == 20 and int(loaded.memory.steps.numpy()) == 3
    assert not any(k.trainable for k in loaded.key_encoder.weights)
    # Training continues from the restored state exactly like the original.
    x, y = _batches(1, batch=4, seed=5)
    losses = [_fit(m, x, y, batch=4)[0] for m in (model, loaded)]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-6)


@pytest.fixture(scope="module")
def linear_head_model_with_memory():
    """`_trained_model_with_memory` with a linear head, trained once for both checkpoint formats (which only
    read it)."""
    return _trained_model_with_memory(hidden_dims=())


@pytest.mark.parametrize("kind", ["tf_checkpoint", "weights_h5"])
def test_checkpoint_round_trip_restores_queue_and_momentum_encoder(tmp_path, kind, linear_head_model_with_memory):
    # A linear head: tf.train.Checkpoint does not reach ProjectionHead's hidden
    # layers (a Python list), for the online head as much as for the key head.
    model = linear_head_model_with_memory
    fresh = _model(queue_size=20, queue_warmup_steps=1, key_momentum=0.8, hidden_dims=())
    fresh.compile(optimizer=keras.optimizers.SGD(0.3))
    assert int(fresh.memory.filled.numpy()) == 0
    if kind == "tf_checkpoint":
        path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
        tf.train.Checkpoint(model=fresh).read(path).assert_existing_objects_matched()
    else:  # what keras.callbacks.BackupAndRestore writes and reads
        model.save_weights(str(tmp_path / "latest.weights.h5"))
        fresh.load_weights(str(tmp_path / "latest.weights.h5"))
    for expected, restored in zip(_memory_state(model), _memory_state(fresh)):
        np.testing.assert_array_equal(restored, expected)
    for expected, restored in zip(model.get_weights(), fresh.get_weights()):
        np.testing.assert_array_equal(restored, expected)


# -- two replicas -----------------------------------------------------------------------------------


def _two_cpu_strategy():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    return distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])


@pytest.mark.parametrize("key_momentum", [pytest.param(None, marks=pytest.mark.slow), 0.9])
def test_two_replicas_hold_the_same_queue_and_match_one_device(key_momentum):
    x, _ = _batches(3, batch=8)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 3] * 3, np.int32)  # positives straddle the replica split

    def run(strategy):
        with strategy.scope():
            model = _model(synchronized_bn=True, queue_size=40, key_momentum=key_momentum)
            model.compile(optimizer=keras.optimizers.SGD(0.5))
        loss = _fit(model, x, y, batch=8)[0]
        return model, loss

    single, single_loss = run(tf.distribute.get_strategy())
    strategy = _two_cpu_strategy()
    mirrored, mirrored_loss = run(strategy)
    np.testing.assert_allclose(mirrored_loss, single_loss, rtol=1e-5)
    for a, b in zip(single.get_weights(), mirrored.get_weights()):
        np.testing.assert_allclose(b, a, atol=1e-5)
    assert int(mirrored.memory.filled.numpy()) == 40  # 3 steps x 16 entries, wrapped
    for variable in mirrored.memory.weights + (mirrored.key_encoder.weights if key_momentum else []):
        copies = [t.numpy() for t in strategy.experimental_local_results(variable.value)]
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1], err_msg=variable.path)


# -- argument checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(queue_size=-1), "queue_size"),
        (dict(queue_size=2.5), "queue_size"),
        (dict(queue_size=True), "queue_size"),
        (dict(queue_size=8, queue_warmup_steps=-1), "queue_warmup_steps"),
        (dict(queue_size=8, key_momentum=1.0), "key_momentum"),
        (dict(queue_size=8, key_momentum=-0.1), "key_momentum"),
        (dict(queue_size=8, key_momentum="0.9"), "key_momentum"),
        (dict(key_momentum=0.9), "key_momentum"),
    ],
)
def test_supcon_model_rejects_bad_memory_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _model(**kwargs)


def test_memory_queue_rejects_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        memory.MemoryQueue(0)
    with pytest.raises(ValueError, match="warmup_steps"):
        memory.MemoryQueue(4, warmup_steps=-2)
    queue = memory.MemoryQueue(4)
    queue.build((None, 3))
    with pytest.raises(ValueError, match="features"):
        queue.enqueue(np.zeros((2, 5), np.float32), np.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        queue.enqueue(np.zeros((2, 3), np.float32), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="key_momentum"):
        _model(queue_size=4).embed_keys(np.zeros((1, 2) + IMAGE_SHAPE, np.float32))


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(queue_size=-1), "queue_size"),
        (dict(queue_warmup_steps=-1), "queue_warmup_steps"),
        (dict(key_momentum=0.99), "key_momentum"),
        (dict(queue_size=256, key_momentum=1.0), "key_momentum"),
        (dict(method="ce", queue_size=256), "queue_size"),
    ],
)
def test_run_config_rejects_bad_memory_options(changes, field):
    with pytest.raises(ValueError, match=field):
        RunConfig.from_flat(**changes)


def test_run_config_accepts_memory_options_and_flags_exist():
    config = RunConfig.from_flat(queue_size=4096, queue_warmup_steps=100, key_momentum=0.99)
    assert RunConfig.from_dict(config.to_dict()) == config
    from experiments import common, flagging

    for name in ("queue_size", "queue_warmup_steps", "key_momentum", "sampler", "samples_per_class"):
        assert name in flagging.help_texts(RunConfig) and name in common.FLAGS
    assert os.path.basename(common.__file__) == "common.py"
