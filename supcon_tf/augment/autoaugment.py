"""AutoAugment (Cubuk et al. 2019): its ops, its ImageNet policy, and SupCon's policy class.

For ImageNet SupCon (Khosla et al. 2020) uses AutoAugment after a random resized crop and a
flip (`AutoAugmentPolicy`). The ops are written here in TensorFlow, vectorised over the batch,
following PIL's definitions that the paper uses (`autoaugment_op`, `auto_augment`).

Reference:
  Cubuk, Zoph, Mane, Vasudevan, Le. "AutoAugment: Learning Augmentation Strategies from Data".
  CVPR 2019 (arXiv:1805.09501).
"""

import functools
import math

import numpy as np
import tensorflow as tf

from supcon_tf.augment._checks import check_seed, is_number
from supcon_tf.augment._policy_base import CropFlipAugmentation
from supcon_tf.augment._tensors import luma, per_sample
from supcon_tf.augment.ops import to_float_images

__all__ = [
    "AUTOAUGMENT_OPS",
    "AUTOAUGMENT_IMAGENET_POLICY",
    "autoaugment_op",
    "auto_augment",
    "AutoAugmentPolicy",
]

# The ops of the paper's search space that its ImageNet policy uses (Table 1 of the paper lists
# them with their magnitude ranges; Cutout and SamplePairing are in the search space but not in
# the ImageNet policy and are not implemented).
AUTOAUGMENT_OPS = (
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Rotate",
    "AutoContrast",
    "Invert",
    "Equalize",
    "Solarize",
    "Posterize",
    "Contrast",
    "Color",
    "Brightness",
    "Sharpness",
)
_OP_ID = {name: index for index, name in enumerate(AUTOAUGMENT_OPS)}
_GEOMETRIC_OPS = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
_BLEND_OPS = ("Contrast", "Color", "Brightness", "Sharpness")

# The AutoAugment ImageNet policy: Cubuk et al. 2019, Appendix, Table 9 ("Policy on ImageNet"),
# transcribed row by row. Each sub-policy is two (operation, probability, magnitude) entries,
# magnitude on the paper's 0..10 scale (the table lists one for every op, including those that
# ignore it: AutoContrast, Equalize, Invert). Rows 20-24 repeat rows 4, 1, 13, 14 and 2, as in
# the paper.
AUTOAUGMENT_IMAGENET_POLICY = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),  # 0
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),  # 1
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),  # 2
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),  # 3
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),  # 4
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),  # 5
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),  # 6
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),  # 7
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),  # 8
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),  # 9
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),  # 10
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),  # 11
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),  # 12
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),  # 13
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),  # 14
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),  # 15
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),  # 16
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),  # 17
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),  # 18
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),  # 19
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),  # 20
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),  # 21
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),  # 22
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),  # 23
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),  # 24
)

# Magnitude ranges of the paper's Table 1, reached at magnitude 10.
_MAX_MAGNITUDE = 10.0
_MAX_SHEAR = 0.3
_MAX_TRANSLATE_FRACTION = 150.0 / 331.0  # 150 px on the paper's 331 px ImageNet images.
_MAX_ROTATE_DEGREES = 30.0
_MIN_ENHANCE_FACTOR, _MAX_ENHANCE_FACTOR = 0.1, 1.9
# Pixels that a geometric op pulls from outside the image: mid grey, (128, 128, 128) in uint8.
_AUTOAUGMENT_FILL = 128.0 / 255.0
# PIL's ImageFilter.SMOOTH kernel, which ImageEnhance.Sharpness blends with.
_SMOOTH_KERNEL = ((1.0, 1.0, 1.0), (1.0, 5.0, 1.0), (1.0, 1.0, 1.0))


def _levels(images):
    """`[B, H, W, C]` float32 in [0, 1] -> int32 levels in 0..255 (rounded)."""
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0), tf.int32)


def _project(images, transforms):
    """Applies one projective transform per sample, `transforms` `[B, 8]` (output -> input).

    Row `[a0, a1, a2, b0, b1, b2, c0, c1]` maps the output pixel `(x, y)` (column, row; pixel
    centres at integers) to the input point `((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)`
    with `k = c0 x + c1 y + 1`, sampled bilinearly; outside points read `_AUTOAUGMENT_FILL`.
    """
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=tf.constant(_AUTOAUGMENT_FILL, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def _affine_rows(a0, a1, a2, b0, b1, b2):
    """Stacks per-sample `[B]` (or broadcastable) coefficients into `[B, 8]` transform rows."""
    columns = [a0, a1, a2, b0, b1, b2]
    batch = tf.shape(a2)[0]
    columns = [tf.broadcast_to(tf.cast(c, tf.float32), [batch]) for c in columns]
    zeros = tf.zeros([batch], tf.float32)
    return tf.stack(columns + [zeros, zeros], axis=1)


def _geometric_transforms(op, signed_level, height, width):
    """The `[B, 8]` output -> input transform of each sample's geometric op (identity otherwise).

    `signed_level` `[B]` is `sign * magnitude / 10`. Conventions (those of PIL, whose ops the
    paper uses): ShearX maps output `(x, y)` to input `(x + s * y, y)` (shear about the top-left
    corner), ShearY to `(x, y + s * x)`; TranslateX to `(x + t, y)` with `t` in pixels; Rotate
    turns the content counter-clockwise (as displayed, rows going down) about the image centre
    by `theta` for `theta > 0`.
    """
    zeros = tf.zeros_like(signed_level)
    ones = tf.ones_like(signed_level)
    shear = _MAX_SHEAR * signed_level
    shift_x = _MAX_TRANSLATE_FRACTION * signed_level * width
    shift_y = _MAX_TRANSLATE_FRACTION * signed_level * height
    theta = signed_level * (_MAX_ROTATE_DEGREES * math.pi / 180.0)
    cos, sin = tf.cos(theta), tf.sin(theta)
    # Input point = R(-theta) (output - centre) + centre; pixel centres at integers.
    cx, cy = (width - 1.0) / 2.0, (height - 1.0) / 2.0
    candidates = {
        "ShearX": _affine_rows(ones, shear, zeros, zeros, ones, zeros),
        "ShearY": _affine_rows(ones, zeros, zeros, shear, ones, zeros),
        "TranslateX": _affine_rows(ones, zeros, shift_x, zeros, ones, zeros),
        "TranslateY": _affine_rows(ones, zeros, zeros, zeros, ones, shift_y),
        "Rotate": _affine_rows(
            cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy
        ),
    }
    transforms = _affine_rows(ones, zeros, zeros, zeros, ones, zeros)
    for name in _GEOMETRIC_OPS:
        transforms = tf.where((op == _OP_ID[name])[:, None], candidates[name], transforms)
    return transforms


def _autocontrast(images):
    """PIL `ImageOps.autocontrast` (cutoff 0): each channel of each image stretched to [0, 1]."""
    low = tf.reduce_min(images, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2], keepdims=True)
    span = high - low
    stretched = (images - low) / tf.where(span > 0.0, span, 1.0)
    return tf.where(span > 0.0, stretched, images)


def _equalize(images):
    """PIL `ImageOps.equalize`, per channel per image, vectorised with one segment sum.

    On 0..255 levels: with `h` the channel's 256-bin histogram and `last` the count of its
    highest occupied level, `step = (sum(h) - last) // 255`; level `v` maps to
    `min(255, (step // 2 + sum(h[:v])) // step)`. A channel with `step == 0` (a single level, or
    fewer than 255 pixels below its highest level, e.g. any image under 16x16) is unchanged, as
    in PIL. All `B * C` histograms come from one `unsorted_segment_sum` over `B * H * W * C`
    pixels, and the lookup is one gather.
    """
    shape = tf.shape(images)
    batch, channels = shape[0], shape[3]
    levels = _levels(images)
    # Histogram id of each pixel: (b * C + c) * 256 + level.
    planes = tf.reshape(tf.range(batch * channels), [batch, 1, 1, channels])
    ids = planes * 256 + levels
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(ids), ids, num_segments=batch * channels * 256
    )
    histograms = tf.reshape(counts, [batch * channels, 256])
    occupied = histograms > 0
    # Count of the highest occupied level of each histogram.
    highest = 255 - tf.argmax(tf.cast(tf.reverse(occupied, axis=[1]), tf.int32), axis=1,
                              output_type=tf.int32)
    last = tf.gather(histograms, highest, axis=1, batch_dims=1)
    total = tf.reduce_sum(histograms, axis=1)
    step = (total - last) // 255  # [B * C]
    safe_step = tf.maximum(step, 1)[:, None]
    lut = tf.minimum(
        (safe_step // 2 + tf.cumsum(histograms, axis=1, exclusive=True)) // safe_step, 255
    )
    equalized = tf.cast(tf.gather(tf.reshape(lut, [-1]), ids), tf.float32) / 255.0
    keep = tf.reshape(step == 0, [batch, 1, 1, channels])
    return tf.where(keep, images, equalized)


def _solarize(images, threshold):
    """PIL `ImageOps.solarize`: inverts the pixels whose 0..255 level is >= `threshold` `[B]`."""
    invert = tf.cast(_levels(images), tf.float32) >= per_sample(threshold)
    return tf.where(invert, 1.0 - images, images)


def _posterize(images, bits):
    """PIL `ImageOps.posterize`: keeps the top `bits` `[B]` int32 bits of each 0..255 level.

    Samples with 8 bits are returned unchanged (for float input, not rounded to 0..255 levels).
    """
    mask = tf.bitwise.left_shift(tf.constant(255, tf.int32), 8 - bits) & 255
    posterized = tf.cast(tf.bitwise.bitwise_and(_levels(images), per_sample(mask)), tf.float32)
    return tf.where(per_sample(bits >= 8), images, posterized / 255.0)


def _smooth(images):
    """PIL `ImageFilter.SMOOTH` (3x3 kernel, centre weight 5, sum 13); border pixels unchanged."""
    channels = images.shape[-1]
    kernel = tf.constant(_SMOOTH_KERNEL, tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    smoothed = tf.nn.depthwise_conv2d(images, kernel, strides=[1, 1, 1, 1], padding="SAME")
    shape = tf.shape(images)
    rows = tf.range(shape[1])
    cols = tf.range(shape[2])
    inner_rows = tf.logical_and(rows >= 1, rows <= shape[1] - 2)
    inner_cols = tf.logical_and(cols >= 1, cols <= shape[2] - 2)
    inner = tf.logical_and(inner_rows[:, None], inner_cols[None, :])
    return tf.where(inner[None, :, :, None], smoothed, images)


def _autoaugment_stage(images, op, magnitude, sign, apply):
    """Applies to each sample its own AutoAugment op (one stage of a sub-policy).

    Args:
      images: `[B, H, W, C]` float32 in [0, 1].
      op: `[B]` int32 index into `AUTOAUGMENT_OPS`.
      magnitude: `[B]` float32 on the 0..10 scale.
      sign: `[B]` float32, +1 or -1 (used by the geometric ops only).
      apply: `[B]` bool; samples with False are returned unchanged.

    Magnitude m maps to the ranges of the paper's Table 1, the way the authors' code does
    (`float_parameter` / `int_parameter`, integer parameters truncated):

    * ShearX/Y: shear `sign * 0.3 * m / 10`; TranslateX/Y: `sign * (150 / 331) * m / 10` of the
      width/height, in pixels; Rotate: `sign * 30 * m / 10` degrees (see `_geometric_transforms`);
    * Solarize: threshold `256 - floor(256 * m / 10)` (m = 0 changes nothing, m = 10 inverts);
    * Posterize: `8 - floor(4 * m / 10)` bits (8 at m = 0, 4 at m = 10);
    * Contrast, Color, Brightness, Sharpness: factor `0.1 + 1.8 * m / 10`, unsigned (1.0, the
      identity, at m = 5), blending the image with a degenerate one: black (Brightness), its
      luma (Color; a no-op for 1-channel images), its mean luma (Contrast), its 3x3 smoothing
      (Sharpness): `out = clip(degenerate + factor * (image - degenerate), 0, 1)`;
    * AutoContrast, Invert (`1 - x`), Equalize: no magnitude.

    Cost: the batch is split by op family (`tf.dynamic_partition`: the five geometric ops, which
    share one `ImageProjectiveTransformV3` call with per-sample matrices; AutoContrast; Invert;
    Equalize; Solarize; Posterize; the four blends, which share one blend; no op), each family
    runs on its own samples only, and `tf.dynamic_stitch` puts the batch back together: a stage
    costs about one op per sample, not every op on every sample. Each sample's result is the
    same as when every op ran on the whole batch (the ops are per sample).

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    op = tf.where(apply, op, -1)  # -1: no op.
    family = tf.fill(tf.shape(op), len(_FAMILIES))  # the last partition: no op
    for index, names in enumerate(_FAMILIES):
        for name in names:
            family = tf.where(op == _OP_ID[name], index, family)
    count = len(_FAMILIES) + 1
    positions = tf.dynamic_partition(tf.range(tf.shape(op)[0]), family, count)
    parts = tf.dynamic_partition(images, family, count)
    ops_ = tf.dynamic_partition(op, family, count)
    magnitudes = tf.dynamic_partition(magnitude, family, count)
    signs = tf.dynamic_partition(sign, family, count)
    results = []
    for index, names in enumerate(_FAMILIES):
        function = _FAMILY_FUNCTIONS[names[0]]
        part = parts[index]
        results.append(tf.cond(
            tf.shape(part)[0] > 0,
            functools.partial(function, part, ops_[index], magnitudes[index], signs[index]),
            functools.partial(tf.identity, part),
        ))
    results.append(parts[-1])
    out = tf.dynamic_stitch(positions, results)
    return tf.clip_by_value(tf.reshape(out, tf.shape(images)), 0.0, 1.0)


def _geometric_family(images, op, magnitude, sign):
    shape = tf.shape(images)
    height = tf.cast(shape[1], tf.float32)
    width = tf.cast(shape[2], tf.float32)
    return _project(images, _geometric_transforms(op, sign * (magnitude / _MAX_MAGNITUDE), height, width))


def _solarize_family(images, op, magnitude, sign):
    del op, sign
    return _solarize(images, 256.0 - tf.floor(magnitude * 256.0 / _MAX_MAGNITUDE))


def _posterize_family(images, op, magnitude, sign):
    del op, sign
    return _posterize(images, 8 - tf.cast(tf.floor(magnitude * 4.0 / _MAX_MAGNITUDE), tf.int32))


def _blend_family(images, op, magnitude, sign):
    """Contrast, Color, Brightness, Sharpness: `degenerate + factor * (image - degenerate)`."""
    del sign
    level = magnitude / _MAX_MAGNITUDE
    factor = _MIN_ENHANCE_FACTOR + (_MAX_ENHANCE_FACTOR - _MIN_ENHANCE_FACTOR) * level
    image_luma = luma(images)
    degenerate = tf.where(per_sample(op == _OP_ID["Color"]), image_luma, tf.zeros_like(image_luma))
    mean_luma = tf.reduce_mean(image_luma, axis=[1, 2, 3], keepdims=True)
    degenerate = tf.where(per_sample(op == _OP_ID["Contrast"]), mean_luma, degenerate)
    degenerate = tf.where(per_sample(op == _OP_ID["Sharpness"]), _smooth(images), degenerate)
    return degenerate + per_sample(factor) * (images - degenerate)


def _without_magnitude(function):
    def apply(images, op, magnitude, sign):
        del op, magnitude, sign
        return function(images)

    return apply


# The op families of a stage: the ops of one family run together (one call on their samples).
_FAMILIES = (_GEOMETRIC_OPS, ("AutoContrast",), ("Invert",), ("Equalize",), ("Solarize",), ("Posterize",), _BLEND_OPS)
_FAMILY_FUNCTIONS = {
    "ShearX": _geometric_family,
    "AutoContrast": _without_magnitude(_autocontrast),
    "Invert": _without_magnitude(lambda images: 1.0 - images),
    "Equalize": _without_magnitude(_equalize),
    "Solarize": _solarize_family,
    "Posterize": _posterize_family,
    "Contrast": _blend_family,
}


def _check_autoaugment_policy(policy):
    """Validates a policy table; returns `(ops, probabilities, magnitudes)` as `[N, K]` arrays."""

    def fail(reason):
        raise ValueError(
            "`policy` must be a non-empty sequence of sub-policies, each a sequence of the same "
            f"number (>= 1) of (operation, probability, magnitude) with operation in "
            f"{list(AUTOAUGMENT_OPS)}, probability in [0, 1] and magnitude in [0, 10]; {reason}"
        )

    if not isinstance(policy, (tuple, list)) or not policy:
        fail(f"received: policy={policy!r}")
    width = None
    ops, probabilities, magnitudes = [], [], []
    for row, sub_policy in enumerate(policy):
        if not isinstance(sub_policy, (tuple, list)) or not sub_policy:
            fail(f"sub-policy {row} is {sub_policy!r}")
        if width is None:
            width = len(sub_policy)
        if len(sub_policy) != width:
            fail(f"sub-policy {row} has {len(sub_policy)} ops, sub-policy 0 has {width}")
        for entry in sub_policy:
            ok = isinstance(entry, (tuple, list)) and len(entry) == 3
            if ok:
                name, probability, magnitude = entry
                ok = (
                    isinstance(name, str)
                    and name in _OP_ID
                    and is_number(probability)
                    and 0.0 <= probability <= 1.0
                    and is_number(magnitude)
                    and 0.0 <= magnitude <= _MAX_MAGNITUDE
                )
            if not ok:
                fail(f"sub-policy {row} has the entry {entry!r}")
        ops.append([_OP_ID[name] for name, _, _ in sub_policy])
        probabilities.append([float(p) for _, p, _ in sub_policy])
        magnitudes.append([float(m) for _, _, m in sub_policy])
    return (
        np.array(ops, np.int32),
        np.array(probabilities, np.float32),
        np.array(magnitudes, np.float32),
    )


def autoaugment_op(images, name, magnitude, *, sign=1.0):
    """Applies one AutoAugment op at a fixed magnitude to every image of a batch.

    The same code path as `auto_augment` (see `_autoaugment_stage` for the magnitude mapping),
    with the op always applied; meant for inspection and tests.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      name: one of `AUTOAUGMENT_OPS`.
      magnitude: number in [0, 10], the paper's magnitude scale.
      sign: +1 or -1, the direction of the geometric ops (ignored by the others).

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    if not isinstance(name, str) or name not in _OP_ID:
        raise ValueError(f"`name` must be one of {list(AUTOAUGMENT_OPS)}, received: name={name!r}")
    if not is_number(magnitude) or not 0.0 <= magnitude <= _MAX_MAGNITUDE:
        raise ValueError(
            f"`magnitude` must be a number in [0, 10], received: magnitude={magnitude!r}"
        )
    if not is_number(sign) or sign not in (1, -1):
        raise ValueError(f"`sign` must be 1 or -1, received: sign={sign!r}")
    images = to_float_images(images)
    batch = tf.shape(images)[0]
    return _autoaugment_stage(
        images,
        tf.fill([batch], _OP_ID[name]),
        tf.fill([batch], float(magnitude)),
        tf.fill([batch], float(sign)),
        tf.fill([batch], True),
    )


def auto_augment(images, seed, *, policy=AUTOAUGMENT_IMAGENET_POLICY):
    """AutoAugment: each sample gets a random sub-policy, whose ops fire with their probabilities.

    For every sample independently: a sub-policy is drawn uniformly from `policy`; its ops are
    applied in order, each with its own probability, at its fixed magnitude, and the geometric
    ops (shear, translate, rotate) with a random sign (Cubuk et al. 2019, Sec. 3). All of it is
    vectorised over the batch (`_autoaugment_stage`); no per-sample loops.

    Args:
      images: `[B, H, W, C]` float32 in [0, 1] (or uint8), C in {1, 3}.
      seed: int32/int64 tensor of shape `[2]`.
      policy: sub-policies, each a sequence of the same number of `(operation, probability,
        magnitude)` entries; default: the paper's ImageNet policy
        (`AUTOAUGMENT_IMAGENET_POLICY`, Appendix Table 9).

    Returns:
      `[B, H, W, C]` float32 in [0, 1].
    """
    ops, probabilities, magnitudes = _check_autoaugment_policy(policy)
    seed = check_seed(seed)
    images = to_float_images(images)
    batch = tf.shape(images)[0]
    choice_seed, apply_seed, sign_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 3)
    )
    num_sub_policies, num_stages = ops.shape
    choice = tf.random.stateless_uniform(
        [batch], choice_seed, minval=0, maxval=num_sub_policies, dtype=tf.int32
    )
    op = tf.gather(tf.constant(ops), choice)  # [B, K]
    probability = tf.gather(tf.constant(probabilities), choice)
    magnitude = tf.gather(tf.constant(magnitudes), choice)
    apply = tf.random.stateless_uniform([batch, num_stages], apply_seed) < probability
    sign = tf.where(tf.random.stateless_uniform([batch, num_stages], sign_seed) < 0.5, -1.0, 1.0)
    for stage in range(num_stages):
        images = _autoaugment_stage(
            images, op[:, stage], magnitude[:, stage], sign[:, stage], apply[:, stage]
        )
    return images


class AutoAugmentPolicy(CropFlipAugmentation):
    """ImageNet AutoAugment as SupCon uses it: random resized crop -> flip -> AutoAugment.

    The crop and flip are those of `SimCLRAugment` (per sample, stateless); then each sample
    gets a uniformly drawn sub-policy of the paper's ImageNet policy (Cubuk et al. 2019,
    Appendix Table 9, `AUTOAUGMENT_IMAGENET_POLICY`), each op applied with its probability
    (`auto_augment`). Everything is vectorised over the batch and a pure function of
    `(images, seed)`.

    Args:
      image_size: output `(height, width)`, or one int for a square output.
      crop_scale: `(lo, hi)` area-fraction range of the random resized crop (ImageNet: 0.08-1).
      flip: whether to flip horizontally with probability 0.5.

    Called as `policy(images, seed)` (conventions: `supcon_tf.augment.ops`); returns
    `[B, image_size[0], image_size[1], C]` float32 in [0, 1].

    Example:
      >>> augment = AutoAugmentPolicy(224)
      >>> views = augment(images, tf.constant([0, 1]))  # [B, 224, 224, C]

    Reference:
      Cubuk, Zoph, Mane, Vasudevan, Le. "AutoAugment: Learning Augmentation Strategies from
      Data". CVPR 2019 (arXiv:1805.09501).
    """

    def __init__(self, image_size, *, crop_scale=(0.08, 1.0), flip=True):
        super().__init__(image_size, crop_scale=crop_scale, flip=flip)

    def __call__(self, images, seed):
        images, (policy_seed,) = self._crop_and_flip(images, seed, 3)
        return auto_augment(images, policy_seed)
