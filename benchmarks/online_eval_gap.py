"""How close `--online_eval` comes to the linear probe on the same encoder (the numbers README quotes).

Runs, through the library's one training path (`runner.run`), the README's
two commands: pre-training with `--validation_fraction 0.2 --online_eval`
(digits_supcon preset), then the linear probe (digits_linear preset) on the
pre-trained encoder with the same validation split. Records, per epoch, the
online classifier's `val_online_top1`, and the probe's `val_accuracy` and
test top-1, in `benchmarks/results/online_eval_gap.md` (+ .json).

    .venv/bin/python benchmarks/online_eval_gap.py --out benchmarks/results/online_eval_gap.md

`--epochs` shortens the pre-training (a smoke run: `--epochs 1 --probe_epochs 1`).
"""

import argparse
import csv
import json
import os
import sys
import tempfile

from _results import run_header, write_results  # benchmarks/_results.py (this folder is on sys.path as a script)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, received: {text!r}")
    return value


def measure(work_dir, epochs, probe_epochs, seed):
    from experiments import presets
    from supcon_tf import runner
    from supcon_tf.config import RunConfig

    pretrain = RunConfig.from_flat(**dict(
        presets.get_preset("digits_supcon"), model_dir=os.path.join(work_dir, "pretrain"), epochs=epochs,
        validation_fraction=0.2, online_eval=True, seed=seed, verbose=0, export=False,
    ))
    runner.run(pretrain)
    with open(os.path.join(work_dir, "pretrain", "training_log.csv")) as f:
        online = [float(row["val_online_top1"]) for row in csv.DictReader(f)]
    probe = RunConfig.from_flat(**dict(
        presets.get_preset("digits_linear"), model_dir=os.path.join(work_dir, "probe"), epochs=probe_epochs,
        validation_fraction=0.2, seed=seed, verbose=0, export=False,
        pretrained=os.path.join(work_dir, "pretrain", "model.keras"),
    ))
    metrics = runner.run(probe)
    with open(os.path.join(work_dir, "probe", "training_log.csv")) as f:
        probe_val = [float(row["val_accuracy"]) for row in csv.DictReader(f)]
    return {
        "epochs": epochs, "probe_epochs": probe_epochs, "seed": seed,
        "val_online_top1_per_epoch": online, "probe_val_accuracy_last": probe_val[-1],
        "probe_test_top1": float(metrics["test_top1"]),
    }


def render(result, argv):
    online = result["val_online_top1_per_epoch"]
    rows = "\n".join(f"| {epoch + 1} | {value:.3f} |" for epoch, value in enumerate(online))
    return (
        "# `--online_eval` against the linear probe on the same encoder (digits, one seed)\n\n"
        + run_header("online_eval_gap.py", argv, "CPU")
        + f"Pre-training: digits_supcon, {result['epochs']} epochs, validation fraction 0.2, --online_eval. "
        f"Probe: digits_linear, {result['probe_epochs']} epochs, the same validation split.\n\n"
        "| epoch | val_online_top1 |\n|---|---|\n" + rows + "\n\n"
        f"Probe on the final encoder: val_accuracy {result['probe_val_accuracy_last']:.3f}, "
        f"test top-1 {result['probe_test_top1']:.3f}. Gap at the last epoch (probe val - online val): "
        f"{result['probe_val_accuracy_last'] - online[-1]:+.3f}.\n"
    )


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=_positive, default=10, help="pre-training epochs (the preset's: 10)")
    parser.add_argument("--probe_epochs", type=_positive, default=100, help="probe epochs (the preset's: 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="results Markdown (and .json beside it); none: print only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work_dir:
        result = measure(work_dir, args.epochs, args.probe_epochs, args.seed)
    text = render(result, argv)
    write_results(text, result, args.out)
    print(text)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
