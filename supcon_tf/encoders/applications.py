"""keras.applications backbones (``"keras.applications:<Name>"``) behind the preprocessing each family expects.

``"keras.applications:<Name>"``, e.g. ``"keras.applications:EfficientNetV2B0"``:
``keras.applications.<Name>(include_top=False, weights=None, pooling="avg",
input_shape=(H, W, 3))`` (random initialisation, nothing is downloaded)
behind weightless preprocessing layers (``application_preprocessing``)
that turn the [0, 1] images into what that application documents as its
input: pixels in [0, 255] passed through the family's own
``keras.applications.<family>.preprocess_input`` (caffe BGR mean
subtraction for ResNet/VGG, [-1, 1] for MobileNet(V2)/ResNetV2/Inception/
Xception/NASNet, ImageNet mean/std for DenseNet, the identity for
EfficientNet(V2)/ConvNeXt/MobileNetV3, whose models rescale [0, 255]
themselves). A 1-channel image is repeated to 3 channels first (the
applications' preprocessing and stems are defined on RGB), so the backbone
always sees 3 channels. Height and width must be at least 32 (more for
some: 75 InceptionV3 / InceptionResNetV2, 71 Xception).
``synchronized_bn=True`` rebuilds its BatchNormalization layers
synchronized (by cloning the model). Keyword arguments of the constructor
other than the fixed ones (e.g. ``alpha``, ``minimalistic``) pass through.
"""

import inspect
import re

import keras

from supcon_tf.encoders._common import shape_tuple
from supcon_tf.layers import CaffeImageNetPreprocessing

APPLICATIONS_PREFIX = "keras.applications:"
# keras.applications refuses inputs below 32x32 (a few need more; their own
# constructors say how much, and build_encoder reports it).
APPLICATION_MIN_SPATIAL = 32
# Constructor arguments build_encoder fixes (or leaves at their defaults) for every keras.applications
# model; `name` too, as EfficientNetV2 looks its architecture up by its default name.
_APPLICATION_FIXED_ARGS = (
    "include_top", "weights", "input_tensor", "input_shape", "pooling", "classes", "classifier_activation",
    "name", "include_preprocessing",
)

# keras.applications sub-module (family) -> the input convention of its models, i.e. what the family's
# `preprocess_input` does to [0, 255] RGB pixels. Each is rebuilt from stock layers (and the registered
# CaffeImageNetPreprocessing), so a saved encoder loads after a plain `import supcon_tf`;
# tests/test_backbones.py checks every entry against the family's own preprocess_input.
APPLICATION_INPUT_MODES = {
    "resnet": "caffe", "vgg16": "caffe", "vgg19": "caffe",
    "resnet_v2": "tf", "mobilenet": "tf", "mobilenet_v2": "tf", "inception_v3": "tf",
    "inception_resnet_v2": "tf", "xception": "tf", "nasnet": "tf",
    "densenet": "torch",
    # These models contain their own Rescaling / Normalization of [0, 255] inputs.
    "efficientnet": "raw", "efficientnet_v2": "raw", "convnext": "raw", "mobilenet_v3": "raw",
}
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)  # the "torch" convention, on [0, 1] pixels
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


def application_preprocessing(family, images):
    """Applies the input convention of a keras.applications family to [0, 1] images (a symbolic tensor).

    The result equals ``keras.applications.<family>.preprocess_input(255 * rgb)``,
    where ``rgb`` is `images` with a single channel repeated to three:
    "caffe" (resnet, vgg16, vgg19: BGR, ImageNet means subtracted), "tf"
    ([-1, 1]), "torch" (densenet: ImageNet mean / std) or "raw" ([0, 255];
    efficientnet, efficientnet_v2, convnext, mobilenet_v3, whose models
    rescale their inputs themselves). See ``APPLICATION_INPUT_MODES``.

    Args:
        family: str, a key of ``APPLICATION_INPUT_MODES`` (``application_family(name)``).
        images: ``[batch, H, W, 1 or 3]`` symbolic tensor (``keras.Input``).

    Returns:
        ``[batch, H, W, 3]`` symbolic tensor; the layers added have no weights.
    """
    mode = APPLICATION_INPUT_MODES.get(family)
    if mode is None:
        raise ValueError(
            f"`family` must be one of {sorted(APPLICATION_INPUT_MODES)} (keras.applications families with a "
            f"known input convention), received: family={family!r}"
        )
    if mode == "caffe":
        return CaffeImageNetPreprocessing(name="caffe_preprocessing")(images)
    x = images
    if images.shape[-1] == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    if mode == "tf":
        return keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus_one_one")(x)
    if mode == "torch":
        return keras.layers.Normalization(
            mean=IMAGENET_MEAN_RGB, variance=[s * s for s in IMAGENET_STD_RGB], name="imagenet_normalization"
        )(x)
    return keras.layers.Rescaling(255.0, name="to_0_255")(x)


def application_family(name):
    """The ``keras.applications`` sub-module (e.g. ``"resnet"``) that defines the model ``name``."""
    constructor = _application_constructor(f"{APPLICATIONS_PREFIX}{name}", name)
    return constructor.__module__.rsplit(".", 1)[-1]


def _application_constructor(spec, name):
    constructor = getattr(keras.applications, name, None)
    if constructor is None or inspect.ismodule(constructor) or not callable(constructor):
        available = sorted(
            n for n in dir(keras.applications)
            if not n.startswith("_") and not inspect.ismodule(getattr(keras.applications, n))
        )
        raise ValueError(
            f"encoder {spec!r}: keras.applications has no model {name!r}; available: {', '.join(available)}"
        )
    return constructor


def _synchronize_bn(layer):
    """clone_model hook: a fresh copy of `layer`, BatchNormalization made synchronized."""
    config = layer.get_config()
    if isinstance(layer, keras.layers.BatchNormalization):
        config["synchronized"] = True
    return layer.__class__.from_config(config)


def wrap_application(backbone, family, input_shape, synchronized, name):
    """`backbone` (a keras.applications model on RGB) behind the preprocessing of `family`: a model named `name`.

    With `synchronized`, the backbone is first cloned with every BatchNormalization synchronized.
    """
    if synchronized:
        backbone = keras.models.clone_model(backbone, clone_function=_synchronize_bn)
    inputs = keras.Input(shape=input_shape, name="images")
    outputs = backbone(application_preprocessing(family, inputs))
    return keras.Model(inputs, outputs, name=name)


def application_encoder(spec, name, input_shape, synchronized, kwargs):
    """The encoder ``spec = "keras.applications:<name>"`` on `input_shape` images, `kwargs` to its constructor."""
    constructor = _application_constructor(spec, name)
    input_shape = shape_tuple(input_shape)
    height, width, _ = input_shape
    if height < APPLICATION_MIN_SPATIAL or width < APPLICATION_MIN_SPATIAL:
        raise ValueError(
            f"encoder {spec!r} needs images of at least {APPLICATION_MIN_SPATIAL}x{APPLICATION_MIN_SPATIAL} "
            f"pixels (raise the image size), received: input_shape={input_shape!r}"
        )
    parameters = inspect.signature(constructor).parameters
    unknown = sorted(k for k in kwargs if k in _APPLICATION_FIXED_ARGS or k not in parameters)
    if unknown:
        allowed = [k for k in parameters if k not in _APPLICATION_FIXED_ARGS]
        raise ValueError(
            f"encoder {spec!r} accepts the keyword arguments {allowed} (besides `synchronized_bn`), "
            f"received: {', '.join(f'{k}={kwargs[k]!r}' for k in unknown)}"
        )
    family = constructor.__module__.rsplit(".", 1)[-1]
    if family not in APPLICATION_INPUT_MODES:
        raise ValueError(
            f"encoder {spec!r}: the input convention of keras.applications.{family} is not known here; "
            "build it in your own function ('<module>:<function>') with the preprocessing it needs"
        )
    try:
        backbone = constructor(
            include_top=False,
            weights=None,
            pooling="avg",
            input_shape=(height, width, 3),
            **kwargs,
        )
    except ValueError as error:
        minimum = re.search(r"at least (\d+)x(\d+)", str(error))
        if minimum:
            raise ValueError(
                f"encoder {spec!r} needs images of at least {minimum.group(1)}x{minimum.group(2)} pixels "
                f"(raise the image size), received: input_shape={input_shape!r}"
            ) from None
        raise ValueError(
            f"encoder {spec!r} cannot be built for input_shape={input_shape!r}: "
            f"{' '.join(str(error).split())}"
        ) from error
    return wrap_application(backbone, family, input_shape, synchronized, name=name.lower())
