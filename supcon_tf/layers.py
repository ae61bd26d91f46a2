"""Reusable Keras layers: L2 normalisation, projection head, input preprocessing.

Every layer here follows the keras-hub layer contract: it is
registered for serialisation under the package name ``supcon_tf``, keeps one
attribute per constructor argument, forwards ``**kwargs`` (``name``, ``dtype``,
``trainable``) to ``keras.layers.Layer`` and chains ``get_config`` to it.

Precision: the embeddings that the contrastive loss sees must not be computed
in half precision (a dot product of unit vectors divided by a temperature of
0.1 amplifies float16 rounding by 10x). ``L2Normalize`` therefore computes in
at least float32 and returns at least float32, and ``ProjectionHead`` returns
at least float32 even under a ``mixed_float16`` / ``mixed_bfloat16`` policy.

The Vision Transformer layers (``ClassToken``, ``PositionEmbedding``,
``TransformerBlock``, ``TokenPooling``) live with the ViT encoders in
``supcon_tf.encoders.vit``; they stay importable from here.
"""


import keras
from keras import ops

from supcon_tf._checks import activation as _activation
from supcon_tf._checks import is_int as _is_int
from supcon_tf._checks import is_real as _is_real

# PyTorch-like BatchNormalization constants (PyTorch momentum 0.1 == Keras 0.9);
# the same values as the ResNets and small CNN in supcon_tf.encoders.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# keras.applications ResNet50 ("caffe" preprocessing): per-channel means of
# ImageNet on the 0-255 scale, in BGR order.
IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)

def _at_least_float32(dtype):
    """The dtype a computation on `dtype` data runs in: float32 or float64."""
    return keras.backend.result_type(keras.backend.standardize_dtype(dtype), "float32")


@keras.saving.register_keras_serializable(package="supcon_tf")
class L2Normalize(keras.layers.Layer):
    """Scales each vector to unit Euclidean norm: ``x / max(||x||_2, epsilon)``.

    The norm is taken over ``axis``. A vector whose norm is below ``epsilon``
    (for example an all-zero row) is divided by ``epsilon`` instead, so the
    output and its gradient stay finite. The clamp is applied to the sum of
    squares (``sqrt(max(sum x^2, epsilon^2))``), not to the norm, because the
    gradient of ``sqrt`` at 0 is infinite.

    Precision: the layer does not autocast its inputs. It computes in the
    wider of the input dtype and float32, and returns that dtype: float16 and
    bfloat16 inputs (mixed precision) give a float32 output, float32 gives
    float32, float64 gives float64, integers give float32. This keeps the
    embeddings fed to the contrastive loss in full precision under mixed
    precision.

    Args:
        axis: int, or non-empty tuple of ints. The axis (or axes) over which
            the norm is taken. Defaults to ``-1``.
        epsilon: positive float. Lower bound on the norm. Defaults to
            ``1e-12`` (the value of ``tf.math.l2_normalize``).
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[..., dim]`` tensor of any real dtype.

    Returns:
        A tensor of the same shape, dtype float32 (float64 for float64 inputs),
        whose vectors along ``axis`` have norm 1 (or norm < 1 where the input
        norm was below ``epsilon``).

    Example:

    >>> layer = L2Normalize()
    >>> keras.ops.convert_to_numpy(layer(np.array([[3.0, 4.0]])))
    array([[0.6, 0.8]])

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
        arXiv 2004.11362, Sec. 3.1 (the projection output is normalised to
        the unit hypersphere).
    """

    def __init__(self, axis=-1, epsilon=1e-12, **kwargs):
        if _is_int(axis):
            axis = int(axis)
        elif (
            isinstance(axis, (list, tuple))
            and len(axis) > 0
            and all(_is_int(a) for a in axis)
            and len(set(axis)) == len(axis)
        ):
            axis = tuple(int(a) for a in axis)
        else:
            raise ValueError(
                "`axis` must be an int or a non-empty tuple of distinct ints, "
                f"received: axis={axis!r}"
            )
        if not _is_real(epsilon) or not (0.0 < float(epsilon) < float("inf")):
            raise ValueError(
                f"`epsilon` must be a positive finite float, received: epsilon={epsilon!r}"
            )
        super().__init__(autocast=False, **kwargs)
        self.axis = axis
        self.epsilon = float(epsilon)
        self.supports_masking = True

    def call(self, inputs):
        x = ops.convert_to_tensor(inputs)
        x = ops.cast(x, _at_least_float32(x.dtype))
        sum_squares = ops.sum(ops.square(x), axis=self.axis, keepdims=True)
        inv_norm = ops.rsqrt(ops.maximum(sum_squares, self.epsilon**2))
        return x * inv_norm

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Explicit, because Keras would otherwise give the symbolic output the
        # layer's compute dtype (float16 under mixed precision).
        return keras.KerasTensor(inputs.shape, dtype=_at_least_float32(inputs.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "axis": list(self.axis) if isinstance(self.axis, tuple) else self.axis,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="supcon_tf")
class ProjectionHead(keras.layers.Layer):
    """The SupCon projection network: an MLP from representation r to embedding z.

    For each width ``h`` in ``hidden_dims``: ``Dense(h)`` -> optional
    ``BatchNormalization`` -> ``activation``; then ``Dense(output_dim)``; then,
    if ``normalize``, ``L2Normalize`` (so z lies on the unit hypersphere).
    ``hidden_dims=()`` gives a linear head. Hidden ``Dense`` layers drop their
    bias when followed by batch normalisation (the BN shift replaces it). BN
    uses momentum 0.9 and epsilon 1e-5 (PyTorch-like, as in the encoders).

    The sublayers are created in ``__init__`` and built in ``build``, so a
    ``.keras`` save/load restores every weight.

    Precision: under mixed precision the dense layers compute in the policy's
    compute dtype (float16/bfloat16), and the output is always cast up to at
    least float32 (with ``normalize=True`` the normalisation itself runs in
    float32, see ``L2Normalize``).

    Args:
        hidden_dims: tuple (or list) of positive ints, possibly empty. Widths of
            the hidden layers. Defaults to ``(2048,)``, the paper's ResNet-50
            head (2048 -> 2048 -> 128).
        output_dim: positive int. Embedding dimension D. Defaults to ``128``.
        activation: str or callable. Activation after each hidden layer (any
            identifier ``keras.activations.get`` accepts). Defaults to
            ``"relu"``.
        use_batch_norm: bool. Whether to put ``BatchNormalization`` between
            each hidden ``Dense`` and its activation. Defaults to ``False``.
        normalize: bool. Whether to L2-normalise the output. Defaults to
            ``True``.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[batch, rep_dim]`` float tensor, the encoder representation.
        training: bool or None. Passed to batch normalisation.

    Returns:
        ``[batch, output_dim]`` float32 tensor (float64 under a float64
        policy); rows have unit L2 norm when ``normalize=True``.

    Example:

    >>> head = ProjectionHead(hidden_dims=(512,), output_dim=128)
    >>> z = head(np.random.rand(4, 512).astype("float32"))
    >>> tuple(z.shape)
    (4, 128)

    Reference:
        Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
        arXiv 2004.11362, Sec. 3.1 ("a multi-layer perceptron with a single
        hidden layer of size 2048 and output vector of size 128").
    """

    def __init__(
        self,
        hidden_dims=(2048,),
        output_dim=128,
        activation="relu",
        use_batch_norm=False,
        normalize=True,
        **kwargs,
    ):
        if not isinstance(hidden_dims, (list, tuple)) or not all(
            _is_int(h) and h > 0 for h in hidden_dims
        ):
            raise ValueError(
                "`hidden_dims` must be a tuple of positive ints (possibly empty), "
                f"received: hidden_dims={hidden_dims!r}"
            )
        if not _is_int(output_dim) or output_dim <= 0:
            raise ValueError(
                f"`output_dim` must be a positive int, received: output_dim={output_dim!r}"
            )
        activation_fn = _activation(activation)
        if not isinstance(use_batch_norm, bool):
            raise ValueError(
                f"`use_batch_norm` must be a bool, received: use_batch_norm={use_batch_norm!r}"
            )
        if not isinstance(normalize, bool):
            raise ValueError(f"`normalize` must be a bool, received: normalize={normalize!r}")
        super().__init__(**kwargs)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.output_dim = int(output_dim)
        self.activation = activation_fn
        self.use_batch_norm = use_batch_norm
        self.normalize = normalize

        # Sublayers, in call order. Created here so that they are tracked (and
        # their weights ordered) deterministically; built in `build`.
        self._hidden_layers = []
        for i, width in enumerate(self.hidden_dims):
            self._hidden_layers.append(
                keras.layers.Dense(
                    width,
                    use_bias=not use_batch_norm,
                    dtype=self.dtype_policy,
                    name=f"hidden_dense_{i}",
                )
            )
            if use_batch_norm:
                self._hidden_layers.append(
                    keras.layers.BatchNormalization(
                        momentum=BN_MOMENTUM,
                        epsilon=BN_EPSILON,
                        dtype=self.dtype_policy,
                        name=f"hidden_bn_{i}",
                    )
                )
            self._hidden_layers.append(
                keras.layers.Activation(
                    self.activation, dtype=self.dtype_policy, name=f"hidden_act_{i}"
                )
            )
        self._output_dense = keras.layers.Dense(
            self.output_dim, dtype=self.dtype_policy, name="output_dense"
        )
        self._l2_normalize = (
            L2Normalize(dtype=self.dtype_policy, name="l2_normalize") if normalize else None
        )

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                "`ProjectionHead` expects inputs of shape [batch, rep_dim] with a known "
                f"rep_dim, received: input_shape={tuple(input_shape)}"
            )
        shape = tuple(input_shape)
        for layer in self._hidden_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self._output_dense.build(shape)
        shape = self._output_dense.compute_output_shape(shape)
        if self._l2_normalize is not None:
            self._l2_normalize.build(shape)

    def call(self, inputs, training=None):
        x = inputs
        for layer in self._hidden_layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                x = layer(x, training=training)
            else:
                x = layer(x)
        x = self._output_dense(x)
        if self._l2_normalize is not None:
            return self._l2_normalize(x)
        return ops.cast(x, _at_least_float32(x.dtype))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.output_dim,)

    def compute_output_spec(self, inputs, *args, **kwargs):
        # Explicit, because Keras would otherwise give the symbolic output the
        # layer's compute dtype (float16 under mixed precision).
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape),
            dtype=_at_least_float32(self.compute_dtype),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dims": list(self.hidden_dims),
                "output_dim": self.output_dim,
                "activation": keras.activations.serialize(self.activation),
                "use_batch_norm": self.use_batch_norm,
                "normalize": self.normalize,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="supcon_tf")
class CaffeImageNetPreprocessing(keras.layers.Layer):
    """Maps [0, 1] RGB images to the "caffe" input convention of keras.applications ResNet50.

    ``keras.applications.resnet50.preprocess_input`` expects 0-255 RGB pixels
    and converts them to BGR with the ImageNet channel means subtracted (no
    division by a standard deviation). This layer does the same starting from
    the project's image convention (float in [0, 1]): ``x * 255``, RGB -> BGR,
    minus ``IMAGENET_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)``. A
    single-channel (grayscale) image is first repeated to three channels, so
    the output always has three channels.

    The layer has no weights and no constructor arguments of its own.

    Args:
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[batch, height, width, channels]`` float tensor in [0, 1],
            channels 1 (grayscale) or 3 (RGB).

    Returns:
        ``[batch, height, width, 3]`` tensor in the layer's compute dtype, BGR,
        roughly in [-124, 152].

    Example:

    >>> layer = CaffeImageNetPreprocessing()
    >>> tuple(layer(np.zeros((2, 32, 32, 1), "float32")).shape)
    (2, 32, 32, 3)

    Reference:
        He et al., "Deep Residual Learning for Image Recognition", CVPR 2016;
        ``keras.applications.imagenet_utils.preprocess_input(mode="caffe")``.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = False

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] not in (1, 3):
            raise ValueError(
                "`CaffeImageNetPreprocessing` expects inputs of shape [batch, height, width, "
                f"channels] with channels 1 or 3, received: input_shape={tuple(input_shape)}"
            )

    def call(self, inputs):
        x = inputs * 255.0
        if x.shape[-1] == 1:
            x = ops.concatenate([x, x, x], axis=-1)
        x = ops.flip(x, axis=-1)  # RGB -> BGR
        mean = ops.convert_to_tensor(IMAGENET_CAFFE_MEAN_BGR, dtype=x.dtype)
        return x - mean

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (3,)
