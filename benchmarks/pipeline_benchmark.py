r"""Input pipeline throughput: augmented views/s of the n-view pipeline (what training could consume at most).

    .venv/bin/python benchmarks/pipeline_benchmark.py --out benchmarks/results/pipeline.md

Synthetic uint8 32x32x3 images (CIFAR size) and the bundled digits at 16x16,
batch 256, 2 views, each policy; an image counts once per view produced.
Compare with the train-step views/s of benchmarks/train_step_benchmark.py (a view is one augmented
image; a sample is seen as 2 views).
"""

import argparse
import os
import sys
import time

from _results import run_header, write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)


def measure(policy_name, image_size, source_kind, batches):
    import numpy as np

    from supcon_tf import augment, data

    if source_kind == "digits":
        images, labels = data.load_digits("train")
    else:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(4096, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4096).astype(np.int32)
    policy = augment.get_augmentation(policy_name, image_size)
    dataset = data.make_multiview_dataset(
        data.from_arrays(images, labels), batch_size=256, num_views=2, augment=policy, seed=0, repeat=True
    )
    iterator = iter(dataset)
    for _ in range(3):  # warm-up: tracing, prefetch buffers
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        views, _ = next(iterator)
    seconds = time.perf_counter() - start
    return batches * int(views.shape[0]) * int(views.shape[1]) / seconds


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    rows = [
        ("digits 16x16x1", "simclr", 16, "digits"),
        ("synthetic 32x32x3", "simclr", 32, "synthetic"),
        ("synthetic 32x32x3", "autoaugment", 32, "synthetic"),
        ("synthetic 32x32x3", "randaugment", 32, "synthetic"),
    ]
    lines = ["| data | policy | augmented views/s |", "|---|---|---|"]
    for label, policy, size, kind in rows:
        rate = measure(policy, size, kind, args.batches)
        lines.append(f"| {label} | {policy} | {rate:.0f} |")
        print(lines[-1], flush=True)
    text = run_header("pipeline_benchmark.py", argv, "batch 256 x 2 views") + "\n".join(lines) + "\n"
    print(text)
    write_results(text, None, args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
