r"""How far the augmentation's output moved from an earlier revision's: same images, same seeds, both trees.

    .venv/bin/python benchmarks/augment_difference.py --base a0cd2e8 --out benchmarks/results/augment_difference.md

The library of `--base` is exported with `git archive` into a temporary folder; each tree's policies
(`get_augmentation(name, size)`) run in a process of their own on the same uint8 images and seeds,
and the table gives, per policy and size, the largest and the mean absolute difference of the views
(values in [0, 1]) and the share of values that differ by more than half a uint8 level (0.5 / 255).
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

from _results import export_library, run_header, write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
POLICIES = ("simclr", "autoaugment", "randaugment", "stacked_randaugment")
CASES = ((32, 64), (224, 16))  # (size, images)
SEEDS = 3

_PRODUCE = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np, tensorflow as tf
from supcon_tf import augment
out = {}
for size, count in CASES:
    images = np.random.default_rng(size).integers(0, 256, (count, size, size, 3), dtype=np.uint8)
    gray = images[..., :1]
    for name in POLICIES:
        policy = augment.get_augmentation(name, size)
        for seed in range(SEEDS):
            out[f"{name}|{size}|rgb|{seed}"] = policy(images, tf.constant([seed, 11], tf.int64)).numpy()
        out[f"{name}|{size}|gray|0"] = policy(gray, tf.constant([0, 11], tf.int64)).numpy()
np.savez(sys.argv[1], **out)
"""


def produce(tree, path):
    """Runs the policies of the library in `tree` and saves their views to `path`."""
    code = f"CASES = {CASES!r}\nPOLICIES = {POLICIES!r}\nSEEDS = {SEEDS}\n" + _PRODUCE
    env = dict(os.environ, PYTHONPATH=tree)
    subprocess.run([sys.executable, "-c", code, path], check=True, env=env, cwd=tree)
    return np.load(path)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="The git revision to compare the working tree's library with.")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    revision = subprocess.run(["git", "rev-parse", "--verify", "--short", f"{args.base}^{{commit}}"], cwd=ROOT,
                              capture_output=True, text=True)
    if revision.returncode:
        parser.error(f"--base must name a commit of this repository, received: {args.base!r}")
    base = revision.stdout.strip()
    with tempfile.TemporaryDirectory() as folder:
        old_tree = export_library(base, os.path.join(folder, "base"))
        old = produce(old_tree, os.path.join(folder, "base.npz"))
        new = produce(ROOT, os.path.join(folder, "new.npz"))
        rows, lines = [], [
            "| policy | size | channels | max abs difference | mean abs difference | share > 0.5/255 |",
            "|---|---|---|---|---|---|",
        ]
        groups = sorted({key.rsplit("|", 1)[0] for key in old.files}, key=lambda k: (int(k.split("|")[1]), k))
        for group in groups:
            keys = [k for k in old.files if k.rsplit("|", 1)[0] == group]
            difference = np.concatenate([np.abs(old[k] - new[k]).ravel() for k in keys])
            name, size, channels = group.split("|")
            row = {"policy": name, "size": int(size), "channels": channels, "seeds": len(keys),
                   "max": float(difference.max()), "mean": float(difference.mean()),
                   "share_over_half_level": float((difference > 0.5 / 255).mean())}
            rows.append(row)
            lines.append(f"| {name} | {size}x{size} | {channels} | {row['max']:.2e} | {row['mean']:.2e} | "
                         f"{row['share_over_half_level']:.2e} |")
            print(lines[-1], flush=True)
    setting = f"the working tree against {base}, uint8 images, {SEEDS} seeds (RGB) and 1 (grayscale) per row"
    text = run_header("augment_difference.py", argv, setting) + "\n".join(lines) + "\n"
    write_results(text, {"base": base, "rows": rows}, args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
