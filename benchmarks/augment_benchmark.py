r"""Augmentation per core: supcon_tf's batched policies against the same policies on PIL, one thread each.

    .venv/bin/python benchmarks/augment_benchmark.py --out benchmarks/results/augment.md
    .venv/bin/python benchmarks/augment_benchmark.py --smoke      # seconds: every row once, tiny
    .venv/bin/python benchmarks/augment_benchmark.py --base a0cd2e8 --out benchmarks/results/augment_a0cd2e8.md
                                                                  # the library of an earlier commit against PIL

What is measured, per policy and image size (64 uint8 RGB images of that size in, 64 float32 views out,
views/s = augmented images per second; a sample seen as two views costs two):

* **supcon_tf**: the policy (`supcon_tf.augment.get_augmentation`) called on the whole batch in one
  `tf.function`, a new stateless seed per call; TensorFlow limited to one intra-op and one inter-op
  thread before anything runs.
* **PIL**: the same policy sample by sample with the PIL operations that torchvision's PIL backend
  calls (torchvision itself is not measured: the torchvision wheel that matches the `bench` extra's
  torch 2.13.0+cpu does not import with it, `operator torchvision::nms does not exist`), each
  followed by the float32 conversion that `ToTensor` does, so both sides end with float32 views.
  PIL runs in this one thread.

The two alternate, `--rounds` times, inside one process; the table gives each side's median
views/s over the rounds (the range in brackets) and the ratio of the medians (> 1: supcon_tf faster).
The PIL policies are written here from torchvision's documented semantics (the parameters of
`RandomResizedCrop`, `ColorJitter`, `RandomGrayscale`, the AutoAugment ImageNet policy's ops, and
RandAugment with 2 ops); they are the cost reference, not a bit-exact twin: PIL works in uint8 and
quantises after every op, supcon_tf in float32.
"""

import argparse
import math
import os
import random
import statistics
import sys
import time

from _results import export_library, run_header, write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)

BATCH = 64


# ---- the PIL side: per sample, uint8, as torchvision's PIL backend does it ----------------------------------

def _pil():
    from PIL import Image, ImageEnhance, ImageOps

    return Image, ImageEnhance, ImageOps


def pil_random_resized_crop(image, rng, size, scale):
    """torchvision's `RandomResizedCrop` parameters (10 tries, then a central crop), PIL crop + bilinear resize."""
    Image, _, _ = _pil()
    width, height = image.size
    area = width * height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            break
    else:
        w, h = width, height
        top, left = 0, 0
    return image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))


def pil_flip(image, rng):
    Image, _, _ = _pil()
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def pil_adjust_hue(image, delta):
    """torchvision's PIL `adjust_hue`: the H channel of PIL's HSV mode shifted in uint8 (wrapping)."""
    import numpy as np

    Image, _, _ = _pil()
    hue, saturation, value = image.convert("HSV").split()
    shifted = (np.asarray(hue, dtype=np.uint8) + np.uint8(int(delta * 255) % 256)).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(shifted, "L"), saturation, value)).convert("RGB")


def pil_color_jitter(image, rng, strength=0.4, hue=0.1, p=0.8):
    """`RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)`: the four ops in a random order."""
    _, ImageEnhance, _ = _pil()
    if rng.random() >= p:
        return image
    order = [0, 1, 2, 3]
    rng.shuffle(order)
    for op in order:
        if op == 0:
            image = ImageEnhance.Brightness(image).enhance(rng.uniform(1 - strength, 1 + strength))
        elif op == 1:
            image = ImageEnhance.Contrast(image).enhance(rng.uniform(1 - strength, 1 + strength))
        elif op == 2:
            image = ImageEnhance.Color(image).enhance(rng.uniform(1 - strength, 1 + strength))
        else:
            image = pil_adjust_hue(image, rng.uniform(-hue, hue))
    return image


def pil_grayscale(image, rng, p=0.2):
    return image.convert("L").convert("RGB") if rng.random() < p else image


def pil_simclr(image, rng, size, scale=(0.2, 1.0)):
    image = pil_flip(pil_random_resized_crop(image, rng, size, scale), rng)
    return pil_grayscale(pil_color_jitter(image, rng), rng)


def _pil_op(image, name, magnitude, rng):
    """One AutoAugment / RandAugment op on PIL, magnitude on the 0..10 scale (AutoAugment's Table 1)."""
    Image, ImageEnhance, ImageOps = _pil()
    sign = -1 if rng.random() < 0.5 else 1
    fraction = magnitude / 10.0
    fill = (128, 128, 128)
    if name in ("ShearX", "ShearY"):
        shear = sign * 0.3 * fraction
        matrix = (1, shear, 0, 0, 1, 0) if name == "ShearX" else (1, 0, 0, shear, 1, 0)
        return image.transform(image.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=fill)
    if name in ("TranslateX", "TranslateY"):
        pixels = sign * fraction * 150 / 331 * image.size[0]
        matrix = (1, 0, pixels, 0, 1, 0) if name == "TranslateX" else (1, 0, 0, 0, 1, pixels)
        return image.transform(image.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=fill)
    if name == "Rotate":
        return image.rotate(sign * 30 * fraction, Image.BILINEAR, fillcolor=fill)
    if name == "AutoContrast":
        return ImageOps.autocontrast(image)
    if name == "Invert":
        return ImageOps.invert(image)
    if name == "Equalize":
        return ImageOps.equalize(image)
    if name == "Solarize":
        return ImageOps.solarize(image, int(256 - 256 * fraction))
    if name == "Posterize":
        return ImageOps.posterize(image, max(1, int(8 - 4 * fraction)))
    if name == "Identity":
        return image
    enhancer = {"Contrast": ImageEnhance.Contrast, "Color": ImageEnhance.Color,
                "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}[name]
    return enhancer(image).enhance(1.0 + sign * 0.9 * fraction)


def pil_autoaugment(image, rng, size):
    """Random resized crop (0.08-1), flip, then one sub-policy of the AutoAugment ImageNet policy."""
    from supcon_tf.augment import AUTOAUGMENT_IMAGENET_POLICY

    image = pil_flip(pil_random_resized_crop(image, rng, size, (0.08, 1.0)), rng)
    for name, probability, magnitude in AUTOAUGMENT_IMAGENET_POLICY[rng.randrange(len(AUTOAUGMENT_IMAGENET_POLICY))]:
        if rng.random() < probability:
            image = _pil_op(image, name, magnitude, rng)
    return image


_RANDAUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
                    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")


def pil_randaugment_ops(image, rng, num_ops=2, magnitude=5):
    """torchvision's `RandAugment(num_ops=2)`: two ops drawn uniformly, magnitude 5 of 10 (Keras' factor 0.5)."""
    for _ in range(num_ops):
        image = _pil_op(image, rng.choice(_RANDAUGMENT_OPS), magnitude, rng)
    return image


def pil_randaugment(image, rng, size):
    return pil_randaugment_ops(pil_flip(pil_random_resized_crop(image, rng, size, (0.08, 1.0)), rng), rng)


def pil_stacked_randaugment(image, rng, size):
    return pil_randaugment_ops(pil_simclr(image, rng, size, (0.08, 1.0)), rng)


PIL_POLICIES = {
    "simclr": pil_simclr,
    "autoaugment": pil_autoaugment,
    "randaugment": pil_randaugment,
    "stacked_randaugment": pil_stacked_randaugment,
}


def pil_batch(policy, images, rng, size):
    """The PIL policy on each image, then `ToTensor`'s conversion (float32 in [0, 1])."""
    import numpy as np

    return [np.asarray(policy(image, rng, size), dtype=np.float32) * (1.0 / 255.0) for image in images]


# ---- the run -------------------------------------------------------------------------------------------------

def measure(policy_name, size, rounds, batches):
    """`(ours views/s per round, PIL views/s per round)`, alternating in this process."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from supcon_tf import augment

    arrays = np.random.default_rng(0).integers(0, 256, size=(BATCH, size, size, 3), dtype=np.uint8)
    images = tf.constant(arrays)
    pil_images = [Image.fromarray(a, "RGB") for a in arrays]
    policy = augment.get_augmentation(policy_name, size)
    ours_fn = tf.function(lambda x, seed: policy(x, seed))
    pil_policy = PIL_POLICIES[policy_name]
    rng = random.Random(0)
    calls = iter(range(10**9))
    ours_fn(images, tf.constant([0, next(calls)], tf.int64)).numpy()  # tracing and XLA compilation
    pil_batch(pil_policy, pil_images, rng, size)
    ours, pil = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(batches):
            ours_fn(images, tf.constant([0, next(calls)], tf.int64)).numpy()
        ours.append(batches * BATCH / (time.perf_counter() - start))
        start = time.perf_counter()
        for _ in range(batches):
            pil_batch(pil_policy, pil_images, rng, size)
        pil.append(batches * BATCH / (time.perf_counter() - start))
    return ours, pil


def _cell(rates):
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="simclr,autoaugment,randaugment,stacked_randaugment")
    parser.add_argument("--sizes", default="224,32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=0, help="Batches per round and side (default: 2 at 224, 30 at 32).")
    parser.add_argument("--smoke", action="store_true", help="Every row once at 16x16, one batch: a check that it runs.")
    parser.add_argument("--base", default=None,
                        help="Measure the supcon_tf of this git revision (exported with git archive) instead of the "
                             "working tree's.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.base:
        try:
            sys.path.insert(0, export_library(args.base))
        except ValueError:
            parser.error(f"--base must name a commit of this repository, received: {args.base!r}")
    policies = args.policies.split(",")
    unknown = sorted(set(policies) - set(PIL_POLICIES))
    if unknown:
        parser.error(f"--policies takes names from {sorted(PIL_POLICIES)}, received: {unknown}")
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes comma-separated ints, received: {args.sizes!r}")
    if args.rounds < 1 or args.batches < 0 or any(s < 8 for s in sizes):
        parser.error(f"--rounds >= 1, --batches >= 0 and --sizes >= 8, received: {args.rounds}, {args.batches}, {sizes}")
    if args.smoke:
        sizes, args.rounds, args.batches = [16], 1, 1

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import PIL

    lines = [
        "| policy | size | supcon_tf views/s (1 thread) | PIL views/s (1 thread) | ratio supcon_tf / PIL |",
        "|---|---|---|---|---|",
    ]
    rows = []
    for size in sizes:
        for name in policies:
            batches = args.batches or (2 if size >= 128 else 30)
            ours, pil = measure(name, size, args.rounds, batches)
            ratio = statistics.median(ours) / statistics.median(pil)
            rows.append({"policy": name, "size": size, "batch": BATCH, "batches_per_round": batches,
                         "supcon_tf_views_per_s": ours, "pil_views_per_s": pil, "ratio_of_medians": ratio})
            lines.append(f"| {name} | {size}x{size} | {_cell(ours)} | {_cell(pil)} | {ratio:.2f} |")
            print(lines[-1], flush=True)
    import supcon_tf

    library = f"supcon_tf of {args.base}" if args.base else "supcon_tf of the working tree"
    if args.base and not supcon_tf.__file__.startswith(sys.path[0]):
        raise RuntimeError(f"--base {args.base}: measured {supcon_tf.__file__}, not the exported library")
    setting = (f"{library}, {BATCH} uint8 RGB images per batch, {args.rounds} alternating rounds, TensorFlow {tf.__version__}, "
               f"Pillow {PIL.__version__}, {os.cpu_count()} CPUs in the machine, one thread used")
    text = run_header("augment_benchmark.py", argv, setting) + "\n".join(lines) + "\n"
    write_results(text, {"setting": setting, "rows": rows}, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
