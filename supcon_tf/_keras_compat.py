"""The one place where supcon_tf relies on private or undocumented Keras (and TensorFlow) behaviour.

Every function here names what it relies on, and `tests/test_keras_compat.py` guards each of
those with a test that fails, saying what changed, when a Keras upgrade breaks it. Other
modules use the functions here instead of reaching into Keras themselves.
"""

import copy

import keras
import tensorflow as tf

__all__ = [
    "MultiWorkerFitMixin", "StatelessSeedGenerator", "bound_port", "compute_with_tensorflow", "is_multi_worker",
    "optimizer_variable_index", "rand_augment_sublayers",
]


def rand_augment_sublayers(layer):
    """The `(name, sub-layer)` pairs of a `keras.layers.RandAugment`, in its op-index order.

    Private: reads the class attribute `RandAugment._AUGMENT_LAYERS`, the list of the layer's
    sub-layer attribute names (`"random_shear"`, ..., `"equalization"`) that Keras' own
    `get_random_transformation` and `transform_images` index with their op indices. There is
    no public equivalent: the layer tracks its sub-layers, but in the order they are assigned
    in `__init__`, which differs (Solarization before RandomPosterization).
    """
    return tuple((name, getattr(layer, name)) for name in type(layer)._AUGMENT_LAYERS)


def compute_with_tensorflow(layer):
    """Makes a Keras preprocessing layer compute with TensorFlow ops, whatever the Keras backend.

    Private: sets the layer's `backend` (a `keras.src.utils.backend_utils.DynamicBackend`) to
    "tensorflow", as Keras does itself while the layer runs inside `tf.data`. Needed when the
    layer's methods (`get_random_transformation`, `transform_images`) are called directly on
    TensorFlow tensors rather than through `layer(...)`.
    """
    layer.backend.set_backend("tensorflow")


class StatelessSeedGenerator(keras.random.SeedGenerator):
    """A `keras.random.SeedGenerator` whose i-th draw is `fold_in(seed, i)`, for a seed tensor.

    Keras' random ops take a seed only as a Python int or a `SeedGenerator`; a plain
    `SeedGenerator` keeps its state in a variable, so its draws depend on how often it ran before
    (not stateless), and it cannot be created inside `tf.data.Dataset.map`. This one is a fully
    initialised `SeedGenerator` (public API: its constructor runs, creating the unused state
    variable once, eagerly) whose `next()` derives every draw from a seed tensor instead,
    counting draws in Python (at trace time under `tf.function`), so the draws are a function of
    the seed alone.

    Build one per user (e.g. in a layer's or policy's constructor) and call `from_seed(seed)`
    for each use: it returns a copy (sharing the unused variable) that draws from `seed`.

    Relies on (undocumented): Keras' random ops draw from a `SeedGenerator` only by calling its
    `next()` (`keras.src.random.seed_generator.draw_seed`).
    """

    def __init__(self, name=None):
        super().__init__(seed=0, name=name)
        self._seed = None
        self._draws = 0

    def from_seed(self, seed):
        """Returns a copy of this generator whose i-th draw is `fold_in(seed, i)`.

        Args:
          seed: int32/int64 tensor of shape `[2]`.
        """
        generator = copy.copy(self)
        generator._seed = seed
        generator._draws = 0
        return generator

    def next(self, ordered=True):
        del ordered
        if self._seed is None:
            raise ValueError(
                "A StatelessSeedGenerator draws only through `from_seed(seed)`; "
                "this one has no seed"
            )
        seed = tf.random.experimental.stateless_fold_in(self._seed, self._draws)
        self._draws += 1
        return seed


def is_multi_worker(strategy=None):
    """True for a MultiWorkerMirroredStrategy actually running with several workers (`distribute.is_multi_worker`).

    Reads the strategy's private `_in_multi_worker_mode()`: TensorFlow has no public equivalent.
    """
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and bool(
        strategy.extended._in_multi_worker_mode()  # noqa: SLF001 (no public equivalent)
    )


def optimizer_variable_index(optimizer, variable):
    """The index of `variable` in `optimizer`'s per-variable slot lists (e.g. the momentums of a custom optimizer).

    Private: calls `keras.optimizers.Optimizer._get_variable_index`, which Keras' own optimizers use in their
    `update_step` (Keras' `build` adds one slot per variable, in the order of its `_trainable_variables`);
    `update_step` may receive the backend variable rather than the Keras one, and only this method maps both.
    """
    return optimizer._get_variable_index(variable)  # noqa: SLF001 (no public equivalent)


def bound_port(server):
    """The port a started tf.data service server (`DispatchServer` or `WorkerServer`) bound, as an int.

    Private: reads the server's `_address` property ("localhost:PORT"), the only place TensorFlow gives a worker's
    bound port (a dispatcher has the public `target`, "grpc://localhost:PORT"; a worker has nothing public). Needed
    when the server was asked for port 0 (any free port).
    """
    if not isinstance(server, (tf.data.experimental.service.DispatchServer, tf.data.experimental.service.WorkerServer)):
        raise ValueError(f"`server` must be a tf.data service DispatchServer or WorkerServer, received: {server!r}")
    return int(server._address.rsplit(":", 1)[-1])  # noqa: SLF001 (no public equivalent for a worker)


class MultiWorkerFitMixin:
    """Makes Keras 3 `fit`/`evaluate` work under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).

    Overrides private Keras behaviour (this module's job). Two things in
    Keras 3.15's TensorFlow trainer go wrong under a distribution strategy,
    and are replaced here:

    1. Before the first step, `_maybe_symbolic_build(iterator=...)` pulls one
       distributed batch from a *new* iterator over the dataset and
       "reduces" it across replicas with `strategy.reduce("MEAN", batch)`,
       only to learn its shapes. Across workers that reduction is a
       collective on a `PerReplica` and fails ("Attempt to convert a value
       (PerReplica...) ... to a Tensor"); and on any strategy the extra pass
       advances a `shuffle(reshuffle_each_iteration=True)`, so training sees
       other batches than a one-device run with the same seed. Here Keras
       gets the dataset's element spec instead (shapes and dtypes are all it
       needs), and no data is read; a model whose train step makes its
       inputs from the batch (device augmentation) maps that spec to its
       inputs' first (`_symbolic_batch`).
    2. After each step the logs are reduced with
       `strategy.reduce("MEAN", value, axis=0)` (the reduction is hard-coded
       to "auto" in the step function), which fails on scalar logs
       ("Invalid reduction dimension 0 for input with 0 dimensions",
       tensorflow/tensorflow#72388). Under multi-worker training every
       scalar log is returned with shape [1]; the same call then averages it
       over replicas into a scalar, which is what Keras does for
       single-worker strategies.

    A model that overrides `train_step`/`test_step` passes its logs through
    `self._finalize_logs(logs)`; Keras' own steps are wrapped here.

    `tests/test_keras_compat.py::test_keras_still_needs_the_multi_worker_override`
    fails when a Keras upgrade changes the code this relies on: re-check the
    workaround (and drop it if Keras fixed the bugs) before moving the pin.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and getattr(self, "_distribute_strategy", None) is not None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
            iterator = None
        if data_batch is not None:
            data_batch = self._symbolic_batch(data_batch)
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _symbolic_batch(self, data_batch):
        """The batch (or its specs) Keras builds the model's state from; a model whose train step transforms its
        inputs first (`models._base.ViewAugmentationMixin`) returns what the model is called on."""
        return data_batch

    def _finalize_logs(self, logs):
        if not is_multi_worker(self.distribute_strategy):
            return logs
        return {
            key: tf.reshape(value, [1]) if tf.is_tensor(value) and value.shape.rank == 0 else value
            for key, value in logs.items()
        }

    def train_step(self, data):
        return self._finalize_logs(super().train_step(data))

    def test_step(self, data):
        return self._finalize_logs(super().test_step(data))
