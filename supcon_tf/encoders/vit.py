"""Vision Transformer encoders (``"vit_tiny_patch4_32"``, ``"vit_b16"``) and the Keras layers they are built from.

Vision Transformers (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words",
arXiv 2010.11929), the architecture the SupCon paper reports also works with
its loss.

==================  =====  ======  =====  =====  =====  ===============
name                patch  hidden  depth  heads  MLP    parameters*
==================  =====  ======  =====  =====  =====  ===============
vit_tiny_patch4_32  4      192     6      3      768    2,691,648
vit_b16 (ViT-B/16)  16     768     12     12     3072   85,798,656
==================  =====  ======  =====  =====  =====  ===============

(*) For RGB inputs of the reference sizes, 32x32 (64 patches) and 224x224
(196 patches); the ViT-B/16 count equals the published ViT-Base/16 without
its classifier. The tiny one is ViT-Ti's width and heads (DeiT) at half its
depth on 4x4 patches, small enough to train on a CPU at test scale; its
``hidden_dim``, ``depth``, ``num_heads`` and ``mlp_dim`` are keyword
arguments.

Layout: a fixed ``Rescaling`` from [0, 1] to [-1, 1] (the reference ViT
input range; no weights); the patch embedding, a ``Conv2D(hidden, patch,
strides=patch, padding="valid")`` with LeCun-normal kernel, reshaped to
``H/patch * W/patch`` tokens (grayscale images are embedded from their one
channel, no repetition to RGB); a learned class token in front
(``ClassToken``, zero-initialised); learned position embeddings for all
``tokens + 1`` positions (``PositionEmbedding``, normal with stddev 0.02);
embedding dropout; ``depth`` pre-norm ``TransformerBlock``s (LayerNorm ->
multi-head self-attention -> residual; LayerNorm -> Dense(MLP) -> GELU ->
Dense(hidden) -> residual); a final LayerNorm; then ``TokenPooling``: the
class token (``pool="cls"``, default; ViT's ``z_L^0``) or the mean of the
patch tokens (``pool="mean"``). LayerNorm epsilon 1e-6. rep_dim = hidden
(192 / 768). Dropout (``dropout_rate`` on the embeddings, attention output
and MLP; ``attention_dropout_rate`` on the attention probabilities)
defaults to 0. Any height and width that are multiples of the patch size
work (the names give the reference sizes); the position embeddings are
sized for the ``input_shape`` given, so a built model only takes that
size. The ViTs have no BatchNormalization (LayerNorm needs no cross-replica
statistics).

The layers follow the keras-hub layer contract: each is
registered for serialisation under the package name ``supcon_tf`` (so
``.keras`` files that stored them as ``supcon_tf.layers`` classes still load),
keeps one attribute per constructor argument, forwards ``**kwargs`` (``name``,
``dtype``, ``trainable``) to ``keras.layers.Layer`` and chains ``get_config``
to it. They act on token sequences ``[batch, tokens, dim]`` and take ``dim``
(and, for ``PositionEmbedding``, ``tokens``) from their input shape when they
are built: ``ClassToken`` (prepends a learned token), ``PositionEmbedding``
(adds learned position embeddings), ``TransformerBlock`` (pre-norm
self-attention + MLP block) and ``TokenPooling`` (class token or mean of the
other tokens).
"""

import keras
from keras import ops

from supcon_tf._checks import activation as _activation
from supcon_tf._checks import choice, is_real, positive_int, positive_number

# Vision Transformer defaults (Dosovitskiy et al. 2021, and the reference
# google-research/vision_transformer code): LayerNormalization epsilon, and the
# standard deviation of the normal initialiser of the position embeddings.
VIT_LAYER_NORM_EPSILON = 1e-6
VIT_POSITION_EMBEDDING_STDDEV = 0.02
TOKEN_POOLING_MODES = ("cls", "mean")

# name -> default architecture of the Vision Transformers (module docstring).
VITS = {
    "vit_tiny_patch4_32": {"patch_size": 4, "hidden_dim": 192, "depth": 6, "num_heads": 3, "mlp_dim": 768},
    "vit_b16": {"patch_size": 16, "hidden_dim": 768, "depth": 12, "num_heads": 12, "mlp_dim": 3072},
}
VIT_SIZE_KWARGS = ("hidden_dim", "depth", "num_heads", "mlp_dim")
VIT_OPTION_KWARGS = ("dropout_rate", "attention_dropout_rate", "pool")


def _validate_rate(value, arg):
    """`value` as a float in [0, 1) (a dropout rate)."""
    if not is_real(value) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"`{arg}` must be a float in [0, 1), received: {arg}={value!r}")
    return float(value)


def _validate_initializer(value, arg):
    """`value` as a keras initializer instance."""
    message = f"`{arg}` must be a keras initializer (name, config dict or instance), received: {arg}={value!r}"
    try:
        initializer = keras.initializers.get(value)
    except (ValueError, TypeError) as error:
        raise ValueError(message) from error
    if initializer is None:
        raise ValueError(message)
    return initializer


def _check_token_shape(layer, input_shape, need_length=False):
    """Raises unless `input_shape` is [batch, tokens, dim] with a known dim (and tokens)."""
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None or (need_length and shape[1] is None):
        known = "tokens and dim" if need_length else "dim"
        raise ValueError(
            f"`{type(layer).__name__}` expects inputs of shape [batch, tokens, dim] with a "
            f"known {known}, received: input_shape={shape}"
        )
    return shape


class _InitializedWeightLayer(keras.layers.Layer):
    """Base of the layers with one weight drawn from an `initializer` argument (private, not serialised alone)."""

    def __init__(self, initializer, **kwargs):
        initializer = _validate_initializer(initializer, "initializer")
        super().__init__(**kwargs)
        self.initializer = initializer

    def get_config(self):
        config = super().get_config()
        config.update({"initializer": keras.initializers.serialize(self.initializer)})
        return config


@keras.saving.register_keras_serializable(package="supcon_tf")
class ClassToken(_InitializedWeightLayer):
    """Prepends one learned token (ViT's ``[class]`` token) to a token sequence.

    The token is a trainable ``[1, 1, dim]`` weight named ``token``, created
    when the layer is built (``dim`` from the input), broadcast over the batch
    and concatenated in front of the inputs, so the output has one token more.

    Args:
        initializer: keras initializer (name, config dict or instance) of the
            token. Defaults to ``"zeros"`` (as the reference ViT code).
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[batch, tokens, dim]`` float tensor.

    Returns:
        ``[batch, tokens + 1, dim]`` tensor; ``output[:, 0]`` is the class token
        and ``output[:, 1:]`` equals ``inputs``.

    Example:

    >>> layer = ClassToken()
    >>> tuple(layer(np.zeros((2, 64, 192), "float32")).shape)
    (2, 65, 192)

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
        Image Recognition at Scale", ICLR 2021, arXiv 2010.11929, Sec. 3.1,
        Eq. 1 (``x_class``).
    """

    def __init__(self, initializer="zeros", **kwargs):
        super().__init__(initializer, **kwargs)

    def build(self, input_shape):
        shape = _check_token_shape(self, input_shape)
        self.token = self.add_weight(
            shape=(1, 1, shape[-1]), initializer=self.initializer, name="token"
        )

    def call(self, inputs):
        token = ops.cast(self.token, inputs.dtype)
        token = ops.broadcast_to(token, (ops.shape(inputs)[0], 1, self.token.shape[-1]))
        return ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape):
        batch, length, dim = tuple(input_shape)
        return (batch, None if length is None else length + 1, dim)


@keras.saving.register_keras_serializable(package="supcon_tf")
class PositionEmbedding(_InitializedWeightLayer):
    """Adds a learned embedding to every position of a fixed-length token sequence.

    The embeddings are a trainable ``[tokens, dim]`` weight named
    ``embeddings``, one row per position, sized from the input shape when the
    layer is built; the sequence length must therefore be known then, and
    every later input must have that length (no interpolation to other
    lengths).

    Args:
        initializer: keras initializer (name, config dict or instance) of the
            embeddings, or ``None`` for ``RandomNormal(stddev=0.02)`` (the
            reference ViT initialiser). Defaults to ``None``.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[batch, tokens, dim]`` float tensor.

    Returns:
        ``[batch, tokens, dim]`` tensor, ``inputs + embeddings`` (broadcast
        over the batch).

    Example:

    >>> layer = PositionEmbedding()
    >>> y = layer(np.zeros((2, 65, 192), "float32"))
    >>> tuple(layer.embeddings.shape)
    (65, 192)

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
        Image Recognition at Scale", ICLR 2021, arXiv 2010.11929, Sec. 3.1,
        Eq. 1 (``E_pos``).
    """

    def __init__(self, initializer=None, **kwargs):
        if initializer is None:
            # A fresh instance per layer: an unseeded keras initializer fixes
            # its seed at construction, so a shared default would give every
            # layer the same values.
            initializer = keras.initializers.RandomNormal(stddev=VIT_POSITION_EMBEDDING_STDDEV)
        super().__init__(initializer, **kwargs)

    def build(self, input_shape):
        shape = _check_token_shape(self, input_shape, need_length=True)
        self.embeddings = self.add_weight(
            shape=shape[1:], initializer=self.initializer, name="embeddings"
        )

    def call(self, inputs):
        return inputs + ops.cast(self.embeddings, inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="supcon_tf")
class TransformerBlock(keras.layers.Layer):
    """A pre-norm Transformer encoder block: self-attention and an MLP, each residual.

    With ``x`` of shape ``[batch, tokens, dim]``:

        y   = x + Dropout(MultiHeadAttention(LayerNorm(x)))
        out = y + Dropout(Dense_dim(Dropout(activation(Dense_mlp_dim(LayerNorm(y))))))

    (ViT, Eq. 2-3). The attention has ``num_heads`` heads of width
    ``dim // num_heads`` with biased query/key/value/output projections, and
    drops attention probabilities at ``attention_dropout_rate``. ``dim`` is
    taken from the input when the layer is built (it must be divisible by
    ``num_heads``); the sublayers are created and built then, so their
    weights are restored by a ``.keras`` save/load. Dense and attention
    kernels use Keras' default Glorot-uniform initialiser (the reference ViT
    code's ``xavier_uniform``), biases start at zero.

    Args:
        num_heads: positive int. Number of attention heads.
        mlp_dim: positive int. Hidden width of the MLP.
        dropout_rate: float in [0, 1). Dropout on the attention output, after
            the MLP activation and on the MLP output. Defaults to ``0.0``.
        attention_dropout_rate: float in [0, 1). Dropout on the attention
            probabilities. Defaults to ``0.0``.
        activation: str or callable. MLP activation (any identifier
            ``keras.activations.get`` accepts). Defaults to ``"gelu"`` (exact,
            erf-based GELU).
        layer_norm_epsilon: positive float. Epsilon of both LayerNorms.
            Defaults to ``1e-6``.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[batch, tokens, dim]`` float tensor.
        training: bool or None. Enables dropout.

    Returns:
        ``[batch, tokens, dim]`` tensor.

    Example:

    >>> block = TransformerBlock(num_heads=3, mlp_dim=768)
    >>> tuple(block(np.zeros((2, 65, 192), "float32")).shape)
    (2, 65, 192)

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
        Image Recognition at Scale", ICLR 2021, arXiv 2010.11929, Sec. 3.1,
        Eq. 2-3; Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(
        self,
        num_heads,
        mlp_dim,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        activation="gelu",
        layer_norm_epsilon=VIT_LAYER_NORM_EPSILON,
        **kwargs,
    ):
        num_heads = positive_int(num_heads, "num_heads")
        mlp_dim = positive_int(mlp_dim, "mlp_dim")
        dropout_rate = _validate_rate(dropout_rate, "dropout_rate")
        attention_dropout_rate = _validate_rate(attention_dropout_rate, "attention_dropout_rate")
        activation_fn = _activation(activation)
        layer_norm_epsilon = positive_number(layer_norm_epsilon, "layer_norm_epsilon")
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = dropout_rate
        self.attention_dropout_rate = attention_dropout_rate
        self.activation = activation_fn
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        # Sublayers are created in `build`: their widths depend on `dim`.

    def build(self, input_shape):
        shape = _check_token_shape(self, input_shape)
        dim = shape[-1]
        if dim % self.num_heads:
            raise ValueError(
                f"`TransformerBlock` needs the input width divisible by `num_heads`, "
                f"received: input_shape={shape}, num_heads={self.num_heads}"
            )
        policy = self.dtype_policy
        self._attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="attention_norm"
        )
        self._attention = keras.layers.MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=dim // self.num_heads,
            dropout=self.attention_dropout_rate,
            dtype=policy,
            name="attention",
        )
        self._attention_dropout = keras.layers.Dropout(
            self.dropout_rate, dtype=policy, name="attention_dropout"
        )
        self._mlp_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="mlp_norm"
        )
        self._mlp_dense_1 = keras.layers.Dense(
            self.mlp_dim, activation=self.activation, dtype=policy, name="mlp_dense_1"
        )
        self._mlp_dropout_1 = keras.layers.Dropout(
            self.dropout_rate, dtype=policy, name="mlp_dropout_1"
        )
        self._mlp_dense_2 = keras.layers.Dense(dim, dtype=policy, name="mlp_dense_2")
        self._mlp_dropout_2 = keras.layers.Dropout(
            self.dropout_rate, dtype=policy, name="mlp_dropout_2"
        )
        self._attention_norm.build(shape)
        self._attention.build(shape, shape)
        self._mlp_norm.build(shape)
        self._mlp_dense_1.build(shape)
        self._mlp_dense_2.build(shape[:-1] + (self.mlp_dim,))

    def call(self, inputs, training=None):
        x = self._attention_norm(inputs)
        x = self._attention(query=x, value=x, key=x, training=training)
        x = inputs + self._attention_dropout(x, training=training)
        y = self._mlp_norm(x)
        y = self._mlp_dropout_1(self._mlp_dense_1(y), training=training)
        y = self._mlp_dropout_2(self._mlp_dense_2(y), training=training)
        return x + y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "mlp_dim": self.mlp_dim,
                "dropout_rate": self.dropout_rate,
                "attention_dropout_rate": self.attention_dropout_rate,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="supcon_tf")
class TokenPooling(keras.layers.Layer):
    """Pools a token sequence whose first token is a class token into one vector.

    ``mode="cls"`` returns the first (class) token, ``inputs[:, 0]``, the ViT
    representation; ``mode="mean"`` returns the mean of the other tokens,
    ``mean(inputs[:, 1:], axis=1)`` (the class token excluded, as in the
    "global average pooling" ViT variants).

    Args:
        mode: ``"cls"`` or ``"mean"``. Defaults to ``"cls"``.
        **kwargs: standard ``keras.layers.Layer`` arguments (``name``,
            ``dtype``, ``trainable``).

    Call arguments:
        inputs: ``[batch, tokens, dim]`` float tensor, token 0 the class
            token; ``tokens >= 2`` for ``mode="mean"``.

    Returns:
        ``[batch, dim]`` tensor.

    Example:

    >>> layer = TokenPooling("mean")
    >>> tuple(layer(np.zeros((2, 65, 192), "float32")).shape)
    (2, 192)

    Reference:
        Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
        Image Recognition at Scale", ICLR 2021, arXiv 2010.11929, Eq. 4 (the
        class token output ``z_L^0`` is the image representation) and
        Appendix D.3 (class token vs. global average pooling).
    """

    def __init__(self, mode="cls", **kwargs):
        choice(mode, "mode", TOKEN_POOLING_MODES)
        super().__init__(**kwargs)
        self.mode = mode

    def build(self, input_shape):
        shape = _check_token_shape(self, input_shape)
        if self.mode == "mean" and shape[1] is not None and shape[1] < 2:
            raise ValueError(
                '`TokenPooling(mode="mean")` needs at least 2 tokens (a class token and '
                f"one more), received: input_shape={shape}"
            )

    def call(self, inputs):
        if self.mode == "cls":
            return inputs[:, 0, :]
        return ops.mean(inputs[:, 1:, :], axis=1)

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        return (shape[0], shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config


# ---------------------------------------------------------------------------
# The encoders.


def vit_config(name, kwargs):
    """The validated, complete ViT architecture: defaults of `name` (one of ``VITS``) updated by `kwargs`."""
    config = dict(VITS[name])
    for arg in VIT_SIZE_KWARGS:
        if arg in kwargs:
            config[arg] = positive_int(kwargs[arg], arg)
    if config["hidden_dim"] % config["num_heads"]:
        raise ValueError(
            "`hidden_dim` must be divisible by `num_heads`, received: "
            f"hidden_dim={config['hidden_dim']!r}, num_heads={config['num_heads']!r}"
        )
    for arg in ("dropout_rate", "attention_dropout_rate"):
        config[arg] = _validate_rate(kwargs.get(arg, 0.0), arg)
    config["pool"] = choice(kwargs.get("pool", "cls"), "pool", TOKEN_POOLING_MODES)
    return config


def vit(
    name,
    input_shape,
    patch_size,
    hidden_dim,
    depth,
    num_heads,
    mlp_dim,
    dropout_rate,
    attention_dropout_rate,
    pool,
):
    """ViT (Dosovitskiy et al. 2021, Eq. 1-4) on `input_shape` images; see the module docstring."""
    height, width, _ = input_shape
    num_patches = (height // patch_size) * (width // patch_size)
    inputs = keras.Input(shape=input_shape, name="images")
    x = keras.layers.Rescaling(scale=2.0, offset=-1.0, name="rescale")(inputs)  # [0,1] -> [-1,1]
    x = keras.layers.Conv2D(
        hidden_dim,
        patch_size,
        strides=patch_size,
        padding="valid",
        kernel_initializer="lecun_normal",
        name="patch_embedding",
    )(x)
    x = keras.layers.Reshape((num_patches, hidden_dim), name="patch_tokens")(x)
    x = ClassToken(name="class_token")(x)
    x = PositionEmbedding(name="position_embedding")(x)
    x = keras.layers.Dropout(dropout_rate, name="embedding_dropout")(x)
    for i in range(depth):
        x = TransformerBlock(
            num_heads,
            mlp_dim,
            dropout_rate=dropout_rate,
            attention_dropout_rate=attention_dropout_rate,
            layer_norm_epsilon=VIT_LAYER_NORM_EPSILON,
            name=f"block{i + 1}",
        )(x)
    x = keras.layers.LayerNormalization(epsilon=VIT_LAYER_NORM_EPSILON, name="final_norm")(x)
    outputs = TokenPooling(pool, name="pool")(x)
    return keras.Model(inputs, outputs, name=name)
