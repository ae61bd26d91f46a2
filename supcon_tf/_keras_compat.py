"""The one place where supcon_tf relies on private or undocumented Keras behaviour.

Every function here names what it relies on, and `tests/test_keras_compat.py` guards each of
those with a test that fails, saying what changed, when a Keras upgrade breaks it. Other
modules use the functions here instead of reaching into Keras themselves.
"""

import copy

import keras
import tensorflow as tf

__all__ = ["StatelessSeedGenerator", "rand_augment_sublayers", "compute_with_tensorflow"]


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
