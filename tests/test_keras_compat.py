"""Guards for supcon_tf._keras_compat: each private or undocumented Keras behaviour it relies on.

A failure here means a Keras upgrade changed something `_keras_compat` relies on; the message
says what changed and what to update. Keep one test per reliance.
"""

import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import _keras_compat

# The sub-layer attribute names of `keras.layers.RandAugment`, in the order of its op indices, as
# of Keras 3.15.1. `StatelessRandAugment`'s op index i is this tuple's entry i, so a change in
# names or order changes every RandAugment output for a fixed seed.
RAND_AUGMENT_SUBLAYERS = (
    "random_shear",
    "random_translation",
    "random_rotation",
    "random_brightness",
    "random_color_degeneration",
    "random_contrast",
    "random_sharpness",
    "random_posterization",
    "solarization",
    "auto_contrast",
    "equalization",
)


def _images(batch=4, size=16):
    rng = np.random.default_rng(0)
    return tf.constant(rng.uniform(size=(batch, size, size, 3)), tf.float32)


def _rand_augment():
    return keras.layers.RandAugment(value_range=(0, 1), num_ops=2, factor=0.5, seed=0)


def test_rand_augment_still_lists_its_sublayers_in_augment_layers():
    names = getattr(keras.layers.RandAugment, "_AUGMENT_LAYERS", None)
    assert names is not None, (
        "keras.layers.RandAugment no longer has the private class attribute `_AUGMENT_LAYERS`; "
        "supcon_tf._keras_compat.rand_augment_sublayers reads it to list the layer's ops. Find "
        "how this Keras version lists them and update rand_augment_sublayers."
    )
    assert tuple(names) == RAND_AUGMENT_SUBLAYERS, (
        f"keras.layers.RandAugment._AUGMENT_LAYERS changed from {list(RAND_AUGMENT_SUBLAYERS)} to "
        f"{list(names)}: StatelessRandAugment's ops (and its outputs for a fixed seed) change. "
        "Check the new ops, then update RAND_AUGMENT_SUBLAYERS here (and the docs/tests that "
        "count eleven ops)."
    )
    layer = _rand_augment()
    pairs = _keras_compat.rand_augment_sublayers(layer)
    assert [name for name, _ in pairs] == list(RAND_AUGMENT_SUBLAYERS)
    for name, sublayer in pairs:
        assert isinstance(sublayer, keras.layers.Layer), (
            f"RandAugment.{name} is no longer a Keras layer (it is {type(sublayer).__name__}); "
            "`_AUGMENT_LAYERS` changed meaning."
        )


def test_rand_augment_indexes_its_ops_in_augment_layers_order():
    # StatelessRandAugment.op_names promises "the order of the op indices", Keras' own.
    transformation = _rand_augment().get_random_transformation(_images(), training=True)
    assert tuple(transformation["transforms"]) == RAND_AUGMENT_SUBLAYERS, (
        "keras.layers.RandAugment no longer indexes its ops in `_AUGMENT_LAYERS` order "
        f"(its transformation lists {list(transformation['transforms'])}); update "
        "supcon_tf._keras_compat.rand_augment_sublayers to return Keras' op order."
    )


def test_sublayers_take_a_seed_and_transform_images_with_training():
    # Public methods, but StatelessRandAugment calls them directly (not through `layer(...)`).
    for name, sublayer in _keras_compat.rand_augment_sublayers(_rand_augment()):
        draw = inspect.signature(sublayer.get_random_transformation).parameters
        assert {"data", "training", "seed"} <= set(draw), (
            f"RandAugment.{name}.get_random_transformation no longer takes (data, training, "
            f"seed) (it takes {list(draw)}); StatelessRandAugment._apply_op passes them."
        )
        transform = inspect.signature(sublayer.transform_images).parameters
        assert {"images", "transformation", "training"} <= set(transform), (
            f"RandAugment.{name}.transform_images no longer takes (images, transformation, "
            f"training) (it takes {list(transform)}); StatelessRandAugment._apply_op passes them."
        )


def test_preprocessing_layers_still_have_a_switchable_backend():
    for name, sublayer in _keras_compat.rand_augment_sublayers(_rand_augment()):
        backend = getattr(sublayer, "backend", None)
        assert callable(getattr(backend, "set_backend", None)), (
            f"RandAugment.{name} no longer has a `backend` with `set_backend` (Keras' private "
            "DynamicBackend of its tf.data-compatible layers); update "
            "supcon_tf._keras_compat.compute_with_tensorflow."
        )
        _keras_compat.compute_with_tensorflow(sublayer)
        assert getattr(backend, "name", None) == "tensorflow", (
            f"After `backend.set_backend('tensorflow')`, RandAugment.{name}.backend.name is "
            f"{getattr(backend, 'name', None)!r}, not 'tensorflow': Keras' DynamicBackend changed."
        )


def test_seed_generator_constructor_takes_seed_and_name():
    parameters = inspect.signature(keras.random.SeedGenerator).parameters
    assert {"seed", "name"} <= set(parameters), (
        f"keras.random.SeedGenerator no longer takes `seed` and `name` (it takes "
        f"{list(parameters)}); update supcon_tf._keras_compat.StatelessSeedGenerator.__init__."
    )
    generator = _keras_compat.StatelessSeedGenerator()
    assert isinstance(generator, keras.random.SeedGenerator)


def test_keras_random_ops_draw_from_a_seed_generator_through_next():
    base = _keras_compat.StatelessSeedGenerator()
    state = base.state.numpy().copy()
    seed = tf.constant([3, 7], tf.int64)
    generator = base.from_seed(seed)
    first = keras.random.uniform((5,), seed=generator)
    second = keras.random.uniform((5,), seed=generator)
    assert generator._draws == 2, (
        "keras.random.uniform(seed=SeedGenerator) no longer draws its seed by calling the "
        f"generator's `next()` ({generator._draws} calls for 2 draws): "
        "supcon_tf._keras_compat.StatelessSeedGenerator relies on it to make Keras' random ops "
        "stateless. Find how this Keras version draws seeds and update it."
    )
    assert not np.array_equal(first, second)
    again = base.from_seed(seed)
    np.testing.assert_array_equal(first, keras.random.uniform((5,), seed=again))
    other = keras.random.uniform((5,), seed=base.from_seed(tf.constant([4, 7], tf.int64)))
    assert not np.array_equal(first, other)
    np.testing.assert_array_equal(
        base.state.numpy(), state, err_msg="StatelessSeedGenerator's draws touched its variable"
    )


def test_sublayers_draw_their_transformation_from_the_given_seed_generator():
    base = _keras_compat.StatelessSeedGenerator()
    layer = _rand_augment()
    images = _images()
    seed = tf.constant([5, 1], tf.int64)
    for name in ("random_shear", "random_brightness", "solarization"):
        sublayer = getattr(layer, name)
        generator = base.from_seed(seed)
        first = sublayer.get_random_transformation(images, training=True, seed=generator)
        assert generator._draws >= 1, (
            f"RandAugment.{name}.get_random_transformation(seed=generator) no longer draws from "
            "the generator it is given; StatelessRandAugment would fall back to Keras' stateful "
            "generators and lose its stateless, per-call seeding."
        )
        again = sublayer.get_random_transformation(images, training=True, seed=base.from_seed(seed))
        tf.nest.map_structure(
            lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), first, again
        )


def test_keras_still_needs_the_multi_worker_override():
    """Fails loudly when a Keras upgrade changes what MultiWorkerFitMixin works around.

    If this fails: read supcon_tf/distribute.py::MultiWorkerFitMixin, check
    whether the new Keras still pulls a data batch in `_maybe_symbolic_build`
    and still reduces scalar logs with `axis=0` under multi-worker training
    (keras-team/keras#20585, tensorflow/tensorflow#72388), re-run
    `make test-slow`, and adapt or drop the override before moving the pin.
    """
    import inspect

    from keras.src.backend.tensorflow import trainer as tf_trainer
    from keras.src.trainers import epoch_iterator

    assert keras.__version__ == "3.15.1", f"Keras changed to {keras.__version__}: re-check MultiWorkerFitMixin"
    build_source = inspect.getsource(tf_trainer.TensorFlowTrainer._maybe_symbolic_build)
    assert "def _maybe_symbolic_build(self, iterator=None, data_batch=None)" in build_source
    assert "next(it)" in build_source and "self.distribute_strategy.reduce(" in build_source
    reduce_source = inspect.getsource(tf_trainer.reduce_per_replica)
    assert 'strategy.reduce("MEAN", v, axis=0)' in reduce_source
    step_source = inspect.getsource(tf_trainer.TensorFlowTrainer._make_function)
    assert 'reduction="auto"' in step_source
    assert "self.data_adapter" in inspect.getsource(epoch_iterator.EpochIterator.__init__)


def test_multi_worker_mode_probe_still_exists():
    """`_keras_compat.is_multi_worker` reads the strategy's private `_in_multi_worker_mode()`; fails if TF drops it."""
    from tensorflow.python.distribute import collective_all_reduce_strategy

    extended = collective_all_reduce_strategy.CollectiveAllReduceExtended
    assert callable(getattr(extended, "_in_multi_worker_mode", None)), (
        "TensorFlow changed: CollectiveAllReduceExtended._in_multi_worker_mode is gone; re-check "
        "supcon_tf._keras_compat.is_multi_worker"
    )


def test_tf_data_service_servers_still_expose_their_bound_address():
    """`bound_port` reads `_address` ("localhost:PORT"): a dispatcher's must agree with its public `target`, and a
    worker's must be the port it serves on (it registers with the dispatcher under it)."""
    from supcon_tf import data_service

    dispatcher = data_service.start_dispatcher(0, worker_addresses=["localhost:%port%"])
    worker = None
    try:
        port = _keras_compat.bound_port(dispatcher)
        assert dispatcher.target == f"grpc://localhost:{port}", (
            "tf.data service: DispatchServer._address no longer matches `target`; update _keras_compat.bound_port"
        )
        worker = data_service.start_worker(f"localhost:{port}", 0)
        worker_port = _keras_compat.bound_port(worker)
        assert 0 < worker_port < 65536 and worker_port != port
    finally:
        for server in (worker, dispatcher):
            if server is not None:
                server.stop()
    with pytest.raises(ValueError, match="`server` must be a tf.data service"):
        _keras_compat.bound_port("localhost:5050")


def test_optimizer_variable_index_maps_keras_and_backend_variables_to_their_slot():
    """`optimizer_variable_index` calls Keras' private `Optimizer._get_variable_index`: each variable's index in the
    build order, for the Keras variable and for the backend one `update_step` may receive."""
    variables = [keras.Variable(np.zeros(shape, "float32"), name=f"v{i}") for i, shape in enumerate([(2,), (3, 2)])]
    optimizer = keras.optimizers.SGD(momentum=0.9)
    optimizer.build(variables)
    for index, variable in enumerate(variables):
        assert _keras_compat.optimizer_variable_index(optimizer, variable) == index
        assert _keras_compat.optimizer_variable_index(optimizer, variable.value) == index, (
            "Keras' Optimizer._get_variable_index no longer maps a backend variable; update "
            "_keras_compat.optimizer_variable_index"
        )
        assert optimizer.momentums[index].shape == variable.shape
