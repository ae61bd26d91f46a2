"""The encoder registry: the names and forms accepted, their sizes and options, and ``build_encoder``."""

from supcon_tf._checks import boolean
from supcon_tf.encoders._common import shape_tuple
from supcon_tf.encoders.applications import APPLICATIONS_PREFIX, application_encoder
from supcon_tf.encoders.resnet import RESNETS, imagenet_resnet50, resnet, resnet_representation_dim
from supcon_tf.encoders.small_cnn import small_cnn, small_cnn_representation_dim
from supcon_tf.encoders.user import function_encoder
from supcon_tf.encoders.vit import VIT_OPTION_KWARGS, VIT_SIZE_KWARGS, VITS, vit, vit_config

ENCODER_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "imagenet_resnet50",
    "imagenet_resnet200",
    "small_cnn",
    "vit_tiny_patch4_32",
    "vit_b16",
)

# The other accepted forms of an encoder (package docstring, docs/backbones.md).
ENCODER_FORMS = ("keras.applications:<Name>", "<module>:<function>", "<path/to/file.py>:<function>")

# Smallest allowed height/width per encoder. CIFAR ResNets downsample 8x (an
# 8x8 input reaches the last stage as 1x1); keras.applications refuses inputs
# below 32x32; 3x3 convolutions on images smaller than 4x4 see mostly padding.
_MIN_SPATIAL = {
    "resnet18": 8,
    "resnet34": 8,
    "resnet50": 8,
    "imagenet_resnet50": 32,
    "imagenet_resnet200": 32,
    "small_cnn": 4,
    # ViTs: at least one patch (and height, width divisible by the patch size).
    "vit_tiny_patch4_32": VITS["vit_tiny_patch4_32"]["patch_size"],
    "vit_b16": VITS["vit_b16"]["patch_size"],
}

# Keyword arguments each encoder accepts besides `synchronized_bn`.
_ENCODER_KWARGS = {
    "resnet18": (),
    "resnet34": (),
    "resnet50": (),
    "imagenet_resnet50": (),
    "imagenet_resnet200": (),
    "small_cnn": ("width",),
    "vit_tiny_patch4_32": VIT_SIZE_KWARGS + VIT_OPTION_KWARGS,
    "vit_b16": VIT_OPTION_KWARGS,
}


def _validate_name(name, forms=False):
    if not isinstance(name, str) or name not in ENCODER_NAMES:
        other = f", or one of the forms {', '.join(ENCODER_FORMS)}" if forms else ""
        raise ValueError(f"`name` must be one of {ENCODER_NAMES}{other}, received: name={name!r}")


def parse_encoder(name):
    """Splits an encoder string into ``(kind, module, attribute)``, checking only its syntax.

    Nothing is imported. ``kind`` is ``"registered"`` (one of
    ``ENCODER_NAMES``; module and attribute None), ``"application"``
    (``"keras.applications:<Name>"``; module ``"keras.applications"``),
    ``"file"`` (``"<path/to/file.py>:<function>"``; module is the path) or
    ``"module"`` (``"<dotted.module>:<function>"``).

    Raises:
        ValueError: `name` is none of these forms.
    """
    if isinstance(name, str) and name in ENCODER_NAMES:
        return "registered", None, None
    if isinstance(name, str) and ":" in name:
        module, attribute = name.rsplit(":", 1)
        if attribute.isidentifier():
            if module == APPLICATIONS_PREFIX[:-1]:
                return "application", module, attribute
            if module.endswith(".py") and len(module) > 3:
                return "file", module, attribute
            if module and all(part.isidentifier() for part in module.split(".")):
                return "module", module, attribute
    _validate_name(name, forms=True)  # raises


def _validate_kwargs(name, kwargs):
    unknown = sorted(set(kwargs) - set(_ENCODER_KWARGS[name]))
    if unknown:
        raise ValueError(
            f"Encoder {name!r} accepts the keyword arguments "
            f"{list(_ENCODER_KWARGS[name])} (besides `synchronized_bn`), received "
            f"unknown: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}"
        )


def _validate_input_shape(name, input_shape):
    height, width, channels = shape_tuple(input_shape)
    min_spatial = _MIN_SPATIAL[name]
    if height < min_spatial or width < min_spatial:
        raise ValueError(
            f"Encoder {name!r} needs `input_shape` height and width >= {min_spatial}, "
            f"received: input_shape={input_shape!r}"
        )
    if name in VITS:
        patch = VITS[name]["patch_size"]
        if height % patch or width % patch:
            raise ValueError(
                f"Encoder {name!r} needs `input_shape` height and width divisible by its "
                f"patch size {patch}, received: input_shape={input_shape!r}"
            )
    return (height, width, channels)


def representation_dim(name, **kwargs):
    """Returns the representation size ``rep_dim`` of an encoder, without building it.

    Args:
        name: str, one of ``ENCODER_NAMES``.
        **kwargs: the encoder's own keyword arguments (see ``build_encoder``);
            ``width`` for ``"small_cnn"`` and ``hidden_dim`` for
            ``"vit_tiny_patch4_32"`` change the size; unknown ones are
            rejected, and all are validated.

    Returns:
        int: the last dimension of the encoder's ``[batch, rep_dim]`` output,
        equal to ``build_encoder(name, ...).output_shape[-1]``.

    Raises:
        ValueError: unknown `name` or keyword argument, or a bad value of one.
    """
    _validate_name(name)
    _validate_kwargs(name, kwargs)
    if name in VITS:
        return vit_config(name, kwargs)["hidden_dim"]
    if name == "small_cnn":
        return small_cnn_representation_dim(kwargs.get("width", 1.0))
    return resnet_representation_dim(name)


def build_encoder(name, input_shape, *, synchronized_bn=False, **kwargs):
    """Builds an encoder: a functional model from images to a representation.

    Args:
        name: str, one of ``ENCODER_NAMES`` (see the ``supcon_tf.encoders``
            modules for the architectures), ``"keras.applications:<Name>"``
            (any keras.applications model, randomly initialised), or a user
            build function ``"<module>:<function>"`` /
            ``"<path/to/file.py>:<function>"`` (imported, which runs the
            module, and called as ``function(input_shape)``).
            ``parse_encoder`` checks the syntax.
        input_shape: tuple of 3 ints ``(height, width, channels)``, channels 1
            or 3; height and width at least 8 for the CIFAR ResNets, 32 for
            ``"imagenet_resnet50"`` and ``"imagenet_resnet200"``, 4 for
            ``"small_cnn"``; for the ViTs, positive multiples of the patch
            size (4 for ``"vit_tiny_patch4_32"``, reference 32x32; 16 for
            ``"vit_b16"``, reference 224x224).
        synchronized_bn: bool. If True every BatchNormalization layer is
            ``BatchNormalization(synchronized=True)`` (cross-replica batch
            statistics under a distribution strategy; TensorFlow backend).
            The ViTs have no BatchNormalization and reject True.
        **kwargs: encoder-specific options. ``"small_cnn"`` takes ``width``
            (positive number, default 1.0): a multiplier on its 32/64/128
            channels. Both ViTs take ``dropout_rate`` and
            ``attention_dropout_rate`` (floats in [0, 1), default 0.0) and
            ``pool`` (``"cls"``, default: the class token output; or
            ``"mean"``: the mean of the patch tokens after the final
            LayerNorm). ``"vit_tiny_patch4_32"`` also takes the positive ints
            ``hidden_dim`` (default 192, must be divisible by ``num_heads``),
            ``depth`` (6), ``num_heads`` (3) and ``mlp_dim`` (768). The
            ResNets take none. keras.applications models take their
            constructor's own options (e.g. ``alpha``, ``minimalistic``);
            user build functions take none.

    Returns:
        A ``keras.Model`` named ``name`` whose input is ``[batch, *input_shape]``
        float32 images in [0, 1] and whose output is ``[batch, rep_dim]``, with
        ``rep_dim = model.output_shape[-1] = representation_dim(name, **kwargs)``.

    Raises:
        ValueError: unknown `name`, bad `input_shape` (e.g. smaller than the
            encoder's minimum), non-bool `synchronized_bn` (or True for a ViT
            or a user function), unknown/bad keyword arguments; for a user
            function, a module or function that cannot be found, an exception
            while importing or calling it (its type and message), or a
            returned object that is not a model from those images to
            ``[batch, dim]``.

    Example:

    >>> encoder = build_encoder("small_cnn", (8, 8, 1))
    >>> encoder.output_shape
    (None, 128)
    >>> build_encoder("vit_tiny_patch4_32", (32, 32, 3), depth=2).output_shape
    (None, 192)
    """
    kind, module, attribute = parse_encoder(name)
    boolean(synchronized_bn, "synchronized_bn")
    if kind == "application":
        return application_encoder(name, attribute, input_shape, synchronized_bn, kwargs)
    if kind in ("file", "module"):
        return function_encoder(name, kind, module, attribute, input_shape, synchronized_bn, kwargs)
    input_shape = _validate_input_shape(name, input_shape)
    if synchronized_bn and name in VITS:
        raise ValueError(
            f"Encoder {name!r} has no BatchNormalization (a ViT uses LayerNorm), so "
            "`synchronized_bn=True` has no meaning for it; pass synchronized_bn=False. "
            "Received: synchronized_bn=True"
        )
    _validate_kwargs(name, kwargs)
    if name in VITS:
        return vit(name, input_shape, **vit_config(name, kwargs))
    if name in RESNETS:
        return resnet(name, input_shape, synchronized_bn)
    if name == "imagenet_resnet50":
        return imagenet_resnet50(input_shape, synchronized_bn)
    return small_cnn(input_shape, kwargs.get("width", 1.0), synchronized_bn)
