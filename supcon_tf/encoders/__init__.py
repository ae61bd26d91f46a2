"""Encoder backbones: functional Keras models mapping images to a pooled representation.

Every encoder is a named functional ``keras.Model``:

    inputs:  images, ``[batch, height, width, channels]`` float32 in [0, 1],
             channels 1 or 3;
    outputs: the representation r, ``[batch, rep_dim]`` float (float32, or the
             compute dtype under mixed precision): global average pooling
             for the CNNs, the class token output for the ViTs.

``model.output_shape[-1]`` (or ``representation_dim(name)``, without building
anything) gives ``rep_dim``. The models are built only from stock Keras layers
and registered ``supcon_tf`` layers, so ``model.save("x.keras")`` /
``keras.saving.load_model`` round-trip them (a user build function's model
as far as its own layers allow).

``build_encoder(name, input_shape, ...)`` takes a name of ``ENCODER_NAMES``
or another form of ``ENCODER_FORMS`` (docs/backbones.md). One module per
family:

- ``resnet``: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` (CIFAR stem),
  ``"imagenet_resnet50"`` (keras.applications) and ``"imagenet_resnet200"``
  (ImageNet stem);
- ``small_cnn``: ``"small_cnn"``, for tiny images such as the 8x8 digits;
- ``vit``: ``"vit_tiny_patch4_32"``, ``"vit_b16"`` and their layers
  (``ClassToken``, ``PositionEmbedding``, ``TransformerBlock``,
  ``TokenPooling``);
- ``applications``: ``"keras.applications:<Name>"`` and the input
  preprocessing of each keras.applications family;
- ``user``: ``"<module>:<function>"`` / ``"<path/to/file.py>:<function>"``,
  the user's own build function;
- ``weights``: ``load_encoder_weights(encoder, path)`` initialises any
  encoder from a ``.weights.h5`` file (``encoder.save_weights``) or from the
  encoder of a ``.keras`` model (a SupConModel, a classifier or a bare
  encoder), after checking that every variable's shape matches;
  ``load_pretrained_encoder(path, image_shape)`` loads the encoder of a
  saved model (``--pretrained``), refusing a folder, a truncated, corrupt or
  wrong-kind file and non-finite weights (``supcon_tf.errors.BadInputFile``);
- ``registry``: the names and forms, their sizes and options,
  ``parse_encoder``, ``representation_dim`` and ``build_encoder``.

Conventions for the networks built here (CIFAR / ImageNet-stem ResNets, small
CNN): convolutions use ``kernel_initializer="he_normal"`` and
``use_bias=False`` (the following BN has a shift), BN uses momentum 0.9 and
epsilon 1e-5 (the PyTorch defaults: PyTorch's momentum 0.1 is Keras' 0.9).

``synchronized_bn=True`` makes every BatchNormalization
``BatchNormalization(synchronized=True)``: under a ``tf.distribute`` strategy
the batch statistics are then computed over the global batch, across replicas
(the cross-replica BN the paper's TPU code uses). It applies to every CNN
encoder, the keras.applications ones included (their BatchNormalization
layers are rebuilt with ``synchronized=True`` by cloning the model). The ViTs
have no BatchNormalization (LayerNorm needs no cross-replica statistics): they
accept ``synchronized_bn=False`` and reject ``True``; user build functions
reject ``True`` too.

Importing this package registers the ViT layers with Keras.
"""

from supcon_tf.encoders.applications import (
    APPLICATION_INPUT_MODES,
    APPLICATION_MIN_SPATIAL,
    APPLICATIONS_PREFIX,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    application_family,
    application_preprocessing,
)
from supcon_tf.encoders.registry import (
    ENCODER_FORMS,
    ENCODER_NAMES,
    build_encoder,
    parse_encoder,
    representation_dim,
)
from supcon_tf.encoders.vit import (
    TOKEN_POOLING_MODES,
    VIT_LAYER_NORM_EPSILON,
    ClassToken,
    PositionEmbedding,
    TokenPooling,
    TransformerBlock,
)
from supcon_tf.encoders._common import encoder_of
from supcon_tf.encoders.weights import load_encoder_weights, load_pretrained_encoder

# Names the single-module `supcon_tf.encoders` also exposed (imported there from supcon_tf.layers).
from supcon_tf.layers import BN_EPSILON, BN_MOMENTUM, CaffeImageNetPreprocessing  # noqa: F401

__all__ = [
    "APPLICATIONS_PREFIX",
    "APPLICATION_INPUT_MODES",
    "APPLICATION_MIN_SPATIAL",
    "ENCODER_FORMS",
    "ENCODER_NAMES",
    "IMAGENET_MEAN_RGB",
    "IMAGENET_STD_RGB",
    "TOKEN_POOLING_MODES",
    "VIT_LAYER_NORM_EPSILON",
    "ClassToken",
    "PositionEmbedding",
    "TokenPooling",
    "TransformerBlock",
    "application_family",
    "application_preprocessing",
    "build_encoder",
    "encoder_of",
    "load_encoder_weights",
    "load_pretrained_encoder",
    "parse_encoder",
    "representation_dim",
]
