"""`augment_on="device"`: uint8 batches with per-batch view seeds, augmented inside the train step.

What is checked: the config field and its refusals; the pipeline's device
element (structure, dtypes, seeds equal to the host pipeline's for the same
batch index, resume, the P x K sampler, the tf.data service's shards); the
views a model makes from it on one device against the host pipeline's
(SimCLR and NoAugment to the bit; AutoAugment to 2e-6, see
`test_one_device_views_equal_the_host_pipeline`); training steps of SupCon,
SimCLR, CE and the uncached linear probe, one device and two replicas (whose
views differ: the replica id is folded into the seeds), a memory queue with
momentum key networks fed device views; a run interrupted
with host augmentation and resumed with device augmentation; `.keras` and
SavedModel outputs without the augmentation.
"""

import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

import supcon_tf
from supcon_tf import augment, data, data_service, distribute, encoders, layers, models, run_folder, runner
from supcon_tf import config as config_lib
from supcon_tf.config import RunConfig
from helpers import with_loss_config

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("device_augment")

BATCH = 32  # digits train split: 1,437 images = 44 batches a pass
SEED = 3


def _source(channels=1):
    images, labels = data.load_digits("train")
    return data.from_arrays(np.repeat(images, channels, axis=-1), labels)


def _policy(name="simclr"):
    kwargs = {} if name == "none" else dict(crop_scale=(0.4, 1.0), flip=True)
    return augment.get_augmentation(name, 16, **kwargs)


def _stream(augment_on, policy=None, num_views=2, start_batch=0, channels=1):
    return data.make_multiview_dataset(
        _source(channels), batch_size=BATCH, num_views=num_views, augment=policy or _policy(), seed=SEED,
        repeat=True, start_batch=start_batch, augment_on=augment_on,
    )


def _two_cpu_strategy():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    return distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])


def _supcon_model(policy=None, image_shape=(16, 16, 1), **kwargs):
    keras.utils.set_random_seed(0)
    model = models.SupConModel(
        encoders.build_encoder("small_cnn", image_shape, width=0.25), layers.ProjectionHead((32,), 16), **with_loss_config(kwargs)
    )
    if policy is not None:
        model.set_view_augmentation(policy)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return model


# --- the config field -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["gpu", "", "HOST", None, 1])
def test_config_rejects_a_bad_augment_on_in_one_line(value):
    with pytest.raises(ValueError, match="`augment_on`") as error:
        RunConfig.from_flat(augment_on=value)
    assert "\n" not in str(error.value) and repr(value) in str(error.value)


@pytest.mark.parametrize(
    "changes, named",
    [(dict(jit_compile=True), "jit_compile"), (dict(strategy="tpu", tpu="local"), "strategy='tpu'")],
)
def test_config_refuses_device_augmentation_where_xla_compiles_the_step(changes, named):
    RunConfig.from_flat(augment_on="host", **changes)  # fine on the host
    with pytest.raises(ValueError, match="`augment_on`='device'") as error:
        RunConfig.from_flat(augment_on="device", **changes)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_config_field_is_a_flag_resumable_and_agrees_with_the_library():
    from experiments import common, flagging

    assert RunConfig().data.augment_on == "host"
    assert "augment_on" in flagging.help_texts(RunConfig) and "augment_on" in common.FLAGS
    assert config_lib.AUGMENT_ON == data.AUGMENT_ON == ("host", "device")
    assert "augment_on" in run_folder.RESUMABLE_FIELDS
    # Every combination a device run may need is accepted: service, sampler, queue, momentum encoder, CE, linear.
    RunConfig.from_flat(augment_on="device", data_service="grpc://localhost:5050", strategy="mirrored")
    RunConfig.from_flat(augment_on="device", sampler="class_balanced", batch_size=32, queue_size=64, key_momentum=0.99)
    RunConfig.from_flat(augment_on="device", method="ce")
    RunConfig.from_flat(augment_on="device", method="linear", pretrained="x.keras", cache_features=False)


# --- the pipeline -------------------------------------------------------------------------------------------------


def test_device_element_carries_uint8_images_and_the_host_seeds_of_each_batch():
    policy, start = _policy(), 42  # batches 42..45 cross the pass boundary at 44
    host = list(_stream("host", policy, start_batch=start).take(4).as_numpy_iterator())
    device = _stream("device", policy, start_batch=start)
    (images_spec, seeds_spec), labels_spec = device.element_spec
    assert images_spec.dtype == tf.uint8 and images_spec.shape.as_list() == [BATCH, None, None, 1]
    assert seeds_spec.dtype == tf.int64 and seeds_spec.shape.as_list() == [BATCH, 2, 2]
    assert labels_spec.dtype == tf.int32 and labels_spec.shape.as_list() == [BATCH]
    for offset, ((images, seeds), labels) in enumerate(device.take(4).as_numpy_iterator()):
        index = start + offset
        assert images.shape == (BATCH, 8, 8, 1) and images.dtype == np.uint8
        expected_seeds = data.batch_view_seeds(SEED, index, 2).numpy()
        np.testing.assert_array_equal(seeds, np.broadcast_to(expected_seeds, (BATCH, 2, 2)))  # every row
        # Reference: the seeds as the pipeline's docstring defines them, from TensorFlow's primitives.
        base = tf.random.experimental.stateless_fold_in(
            tf.constant([SEED, 0x5C0], tf.int64), tf.constant(index, tf.int64)
        )
        np.testing.assert_array_equal(expected_seeds, tf.random.experimental.stateless_split(base, 2).numpy())
        # The host batch is these images augmented with these seeds (eager, as tf.data computes it).
        host_views, host_labels = host[offset]
        np.testing.assert_array_equal(labels, host_labels)
        np.testing.assert_array_equal(data.augment_views(images, seeds[0], policy).numpy(), host_views)


def test_device_mode_of_the_sampler_and_of_the_service_shards_matches_the_host_batches():
    policy = _policy()
    pk = dict(classes_per_batch=8, samples_per_class=4, augment=policy, seed=SEED, repeat=True, start_batch=5)
    host = list(data.make_class_balanced_dataset(_source(), **pk).take(2).as_numpy_iterator())
    device = data.make_class_balanced_dataset(_source(), augment_on="device", **pk)
    for ((images, seeds), labels), (views, host_labels) in zip(device.take(2).as_numpy_iterator(), host):
        np.testing.assert_array_equal(labels, host_labels)
        np.testing.assert_array_equal(data.augment_views(images, seeds[0], policy).numpy(), views)
    local = list(_stream("device", policy, start_batch=40).take(4).as_numpy_iterator())
    shard = data_service.sharded_multiview_dataset(
        _source(), batch_size=BATCH, augment=None, seed=SEED, start_batch=40, num_shards=2, shard_index=1,
        with_index=True, augment_on="device",
    )
    for index, (images, seeds), labels in shard.take(2).as_numpy_iterator():
        assert (index - 40) % 2 == 1
        expected = local[index - 40]
        for got, want in zip((images, seeds, labels), (*expected[0], expected[1])):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "kwargs, named",
    [
        (dict(augment_on="gpu"), "augment_on"),
        (dict(augment_on="host", augment=None), "augment"),
        (dict(augment_on="device", augment="simclr"), "augment"),
    ],
)
def test_pipeline_rejects_bad_arguments_in_one_line(kwargs, named):
    arguments = dict(batch_size=BATCH, augment=_policy())
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=f"`{named}`"):
        data.make_multiview_dataset(_source(), **arguments)
    with pytest.raises(ValueError, match=f"`{named}`"):
        data_service.sharded_multiview_dataset(_source(), **arguments)


def test_augment_views_rejects_bad_seeds_and_outputs():
    images = tf.zeros([2, 8, 8, 1], tf.uint8)
    with pytest.raises(ValueError, match="`view_seeds`"):
        data.augment_views(images, tf.zeros([2, 3], tf.int64), _policy())
    with pytest.raises(ValueError, match="`augment`"):
        data.augment_views(images, tf.zeros([1, 2], tf.int64), lambda x, seed: tf.zeros([2, 4]))


# --- the model: views on the device ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, channels", [("simclr", 1), ("simclr", 3), ("none", 1), ("autoaugment", 3)])
def test_one_device_views_equal_the_host_pipeline(name, channels):
    """The views a train step makes (a tf.function over the device stream) against the host pipeline's.

    SimCLR and NoAugment: equal to the bit on CPU. AutoAugment: within 2e-6
    (measured at most 5.1e-7). TensorFlow optimises a tf.function's graph
    with Grappler but not a tf.data map function; the pipeline leaves the
    image size dynamic so that the crop geometry is computed at run time in
    both (`data.pipelines._device_images`), but Grappler still folds the
    arithmetic of a policy's own constants (AutoAugment's magnitudes) in its
    own way. RandAugment is not compared element-wise: a last-bit difference
    there can cross a posterize or solarize threshold and move a pixel by
    whole levels (measured: up to 6/255 in one batch of three); the draws are
    the same.
    """
    policy = _policy(name)
    model = models.SupConModel(
        encoders.build_encoder("small_cnn", (16, 16, channels), width=0.25), layers.ProjectionHead((8,), 8)
    )
    model.set_view_augmentation(policy)
    iterator = iter(_stream("device", policy, channels=channels))

    @tf.function
    def views_of_next_batch(iterator):
        (images, seeds), _ = next(iterator)
        return model.device_views(images, seeds)

    for host_views, _ in _stream("host", policy, channels=channels).take(2).as_numpy_iterator():
        device_views = views_of_next_batch(iterator).numpy()
        assert device_views.shape == host_views.shape == (BATCH, 2, 16, 16, channels)
        if name == "autoaugment":
            np.testing.assert_allclose(device_views, host_views, rtol=0, atol=2e-6)
        else:
            np.testing.assert_array_equal(device_views, host_views)


@pytest.mark.parametrize("options", [{}, dict(queue_size=96, key_momentum=0.9, method="simclr")])
def test_supcon_fit_with_device_augmentation_equals_host_augmentation_on_one_device(options):
    """Plain SupCon, and SimCLR with a memory queue filled by momentum key networks (which see the views too)."""
    host_model, device_model = _supcon_model(**options), _supcon_model(_policy(), **options)
    host = host_model.fit(_stream("host"), epochs=1, steps_per_epoch=3, shuffle=False, verbose=0).history
    device = device_model.fit(_stream("device"), epochs=1, steps_per_epoch=3, shuffle=False, verbose=0).history
    assert host == device  # loss, mean_cosine, collapse_share, to the bit
    for a, b in zip(host_model.get_weights(), device_model.get_weights()):  # the queue and key networks included
        np.testing.assert_array_equal(a, b)


def test_device_batches_need_a_policy_and_refuse_xla():
    model = _supcon_model()
    with pytest.raises(ValueError, match="set_view_augmentation"):
        model.fit(_stream("device"), epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)
    with pytest.raises(ValueError, match="`augment`"):
        model.set_view_augmentation("simclr")
    with pytest.raises(ValueError, match="`augment`.*Keras layer"):
        model.set_view_augmentation(keras.layers.Identity())
    model.compile(optimizer="sgd", jit_compile=True)
    with pytest.raises(ValueError, match="`augment`.*jit_compile=True"):
        model.set_view_augmentation(_policy())
    model = _supcon_model(_policy())
    assert model.jit_compile is False  # "auto" resolved for the policy
    with pytest.raises(ValueError, match="`jit_compile`"):
        model.compile(optimizer="sgd", jit_compile=True)
    model.set_view_augmentation(None)
    model.compile(optimizer="sgd", jit_compile=True)  # no policy: XLA is the user's choice again


def _ce_model(policy):
    keras.utils.set_random_seed(0)
    model = models.CrossEntropyModel(encoders.build_encoder("small_cnn", (16, 16, 1), width=0.25), 10)
    model.set_view_augmentation(policy)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    return model


def test_classifier_trains_on_one_device_view_and_refuses_several():
    model = _ce_model(_policy())
    history = model.fit(_stream("device", num_views=1), epochs=1, steps_per_epoch=2, shuffle=False, verbose=0).history
    assert np.isfinite(history["loss"][-1]) and 0.0 <= history["accuracy"][-1] <= 1.0
    with pytest.raises(ValueError, match="num_views=1"):
        _ce_model(_policy()).fit(_stream("device", num_views=2), epochs=1, steps_per_epoch=1, shuffle=False, verbose=0)


# --- two replicas ---------------------------------------------------------------------------------------------------


def test_two_replicas_fold_their_id_into_the_seeds():
    """A global batch of two equal halves: each replica gets the same images and seeds, and different views."""
    strategy, policy, half = _two_cpu_strategy(), _policy(), BATCH // 2
    dataset = _stream("device", policy).take(1).map(  # in the pipeline: the image size stays dynamic
        lambda inputs, labels: tuple(tf.concat([part[:half], part[:half]], axis=0) for part in inputs)
    )
    images, seeds = next(iter(dataset))
    with strategy.scope():
        model = _supcon_model(policy)

    @tf.function
    def views(iterator):  # as Keras' train function: the batch is read inside, shapes from the element spec
        return strategy.run(lambda x: model.device_views(*x), args=(next(iterator),))

    per_replica = [v.numpy() for v in strategy.experimental_local_results(
        views(iter(strategy.experimental_distribute_dataset(dataset)))
    )]
    assert len(per_replica) == 2 and per_replica[0].shape == (half, 2, 16, 16, 1)
    assert np.abs(per_replica[0] - per_replica[1]).max() > 0.1  # the replicas' draws differ
    for replica, got in enumerate(per_replica):  # reference: fold_in(seed_v, replica id), eagerly
        replica_id = tf.constant(replica, tf.int64)
        folded = tf.stack([tf.random.experimental.stateless_fold_in(s, replica_id) for s in tf.unstack(seeds[0])])
        np.testing.assert_array_equal(got, data.augment_views(images[:half], folded, policy).numpy())


@pytest.mark.parametrize("method", ["supcon", "ce"])
def test_fit_under_two_replicas_with_device_augmentation(method):
    strategy, policy = _two_cpu_strategy(), _policy()
    with strategy.scope():
        if method == "supcon":
            model = _supcon_model(policy)
        else:
            model = _ce_model(policy)
    initial = model.get_weights()
    stream = _stream("device", policy, num_views=2 if method == "supcon" else 1)
    history = model.fit(stream, epochs=1, steps_per_epoch=2, shuffle=False, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    assert max(float(np.abs(a - b).max()) for a, b in zip(initial, model.get_weights())) > 1e-4


# --- through the runner ----------------------------------------------------------------------------------------------


def _config(tmp_path, name, **changes):
    values = dict(
        model_dir=str(tmp_path / name), method="supcon", crop_scale_min=0.4, flip=False, encoder_width=0.25,
        head_hidden=32, embedding_dim=16, batch_size=BATCH, epochs=1, steps_per_epoch=2, verbose=0, export=False,
        augment_on="device",
    )
    values.update(changes)
    return RunConfig.from_flat(**values)


@pytest.fixture(scope="module")
def supcon_run(tmp_path_factory):
    """A device-augmented SupCon run with its exports (model.keras, saved_model/)."""
    config = _config(tmp_path_factory.mktemp("device"), "supcon", export=True, validation_fraction=0.1)
    return config, runner.run(config)


@pytest.mark.slow  # end-to-end runs (the `supcon_run` fixture) of several seconds (BUILD_NOTES.md: which tests are slow)
def test_runner_supcon_with_device_augmentation_saves_and_exports_without_it(supcon_run):
    config, metrics = supcon_run
    assert np.isfinite(metrics["final_train_loss"]) and np.isfinite(metrics["final_logs"]["val_loss"])
    assert json.loads(open(os.path.join(config.model_dir, "config.json")).read())["augment_on"] == "device"
    model = supcon_tf.load_model(os.path.join(config.model_dir, "model.keras"), compile=False)
    assert model.view_augmentation is None and "augment" not in json.dumps(model.get_config())
    served = tf.saved_model.load(os.path.join(config.model_dir, "saved_model"))
    for name, function in served.signatures.items():
        ops = {op.type for op in function.graph.get_operations()}
        assert not any(op.startswith(("StatelessRandom", "CropAndResize")) for op in ops), (name, ops)


@pytest.mark.slow  # end-to-end runs of several seconds (BUILD_NOTES.md: which tests are slow)
def test_runner_trains_simclr_ce_and_the_uncached_probe_with_device_augmentation(supcon_run, tmp_path):
    pretrained = os.path.join(supcon_run[0].model_dir, "model.keras")
    for name, changes in {
        "simclr": dict(method="simclr", temperature=0.5),
        "ce": dict(method="ce", evaluate_test=False),
        "linear": dict(method="linear", pretrained=pretrained, cache_features=False, evaluate_test=False),
    }.items():
        config = _config(tmp_path, name, **changes)
        source, _, num_classes = data.load_source(config, "train")
        (images, seeds), _ = next(iter(runner.train_dataset(config, source)))
        assert images.dtype == tf.uint8 and seeds.shape == (BATCH, 2 if name == "simclr" else 1, 2), name
        metrics = runner.run(config)
        assert np.isfinite(metrics["final_train_loss"]), name


@pytest.mark.slow  # two runs through the runner and a resume: 5 s of a worker
def test_a_host_run_interrupted_and_resumed_on_the_device_matches_an_uninterrupted_host_run(tmp_path):
    """SIGTERM after step 4 of 6, inside epoch 2 (host augmentation), resume with --augment_on device: equal weights."""

    class TerminateAt(keras.callbacks.Callback):
        def __init__(self, step):
            super().__init__()
            self.seen, self.step = 0, step

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.seen == self.step:
                os.kill(os.getpid(), signal.SIGTERM)  # the run's SignalWatcher: a backup after this step, then stop

    settings = dict(epochs=2, steps_per_epoch=3, backup_every_steps=1)  # step 4: mid-epoch (an epoch's last step
    # would stop after the epoch's end, and the resumed run would begin at the next epoch)
    reference = _config(tmp_path, "reference", augment_on="host", **settings)
    runner.run(reference)
    interrupted = _config(tmp_path, "run", augment_on="host", **settings)
    with pytest.raises(supcon_tf.resilience.Interrupted):
        runner.run(interrupted, callbacks=[TerminateAt(4)])
    runner.run(interrupted.replace(augment_on="device"))
    state = json.loads(open(os.path.join(interrupted.model_dir, "run_state.json")).read())
    assert [r["global_step"] for r in state["resumes"]] == [4]
    assert state["config_changes"][-1]["changed"] == {"augment_on": ["host", "device"]}

    def weights(config):
        return supcon_tf.load_model(os.path.join(config.model_dir, "model.keras"), compile=False).get_weights()

    difference = max(float(np.abs(a - b).max()) for a, b in zip(weights(reference), weights(interrupted)))
    print(f"host run resumed on the device at step 4: max weight difference {difference:.3g}")
    assert difference <= 1e-5


def test_device_batches_through_the_tf_data_service_equal_the_local_ones():
    ports = []
    for _ in range(2):
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    dispatcher = data_service.start_dispatcher(ports[0], worker_addresses=[f"localhost:{ports[1]}"],
                                               job_gc_timeout_ms=1000)
    worker = data_service.start_worker(dispatcher.target, ports[1])
    try:
        stream = data_service.distribute_through(
            data_service.sharded_multiview_dataset(
                _source(), batch_size=BATCH, augment=None, seed=SEED, start_batch=7, with_index=True,
                augment_on="device",
            ),
            dispatcher.target,
            job_name=data_service.job_name(SEED, 7),
        )
        received = list(stream.take(3).as_numpy_iterator())
    finally:
        worker.stop()
        dispatcher.stop()
    local = list(_stream("device", start_batch=7).take(3).as_numpy_iterator())
    assert [int(index) for index, _, _ in received] == [7, 8, 9]  # one worker: the exact order
    for (_, (images, seeds), labels), ((want_images, want_seeds), want_labels) in zip(received, local):
        assert images.dtype == np.uint8
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(seeds, want_seeds)
        np.testing.assert_array_equal(labels, want_labels)
