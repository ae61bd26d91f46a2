"""The keras-tuner sweep: two tiny trials end to end without ever reading the test split; the split; the binary."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import sweep
from supcon_tf import data, runner
from supcon_tf.config import RunConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(epochs=1, steps_per_epoch=2, batch_size=32, encoder_width=0.25, image_size=8, verbose=0, export=False)


@pytest.fixture
def no_test_split(monkeypatch):
    """Every way to the digits test split raises; returns the list of splits that were loaded."""
    loaded = []
    load_digits, load_source = data.load_digits, runner.load_source

    def guarded_load_digits(split, **kwargs):
        loaded.append(split)
        if split != "train":
            raise AssertionError(f"the sweep read the {split!r} split")
        return load_digits(split, **kwargs)

    def guarded_load_source(config, split):
        if split != "train":
            raise AssertionError(f"the sweep loaded the {split!r} source")
        return load_source(config, split)

    monkeypatch.setattr(data, "load_digits", guarded_load_digits)
    monkeypatch.setattr(runner, "load_source", guarded_load_source)
    return loaded


def test_guard_catches_a_test_read(no_test_split):
    with pytest.raises(AssertionError, match="test"):
        data.load_digits("test")


def test_two_trials_end_to_end_never_read_the_test_split(tmp_path, no_test_split):
    base = RunConfig(method="supcon", model_dir=str(tmp_path / "sweep"), **TINY)
    config = sweep.SweepConfig(
        base=base, tuner="random", max_trials=2, learning_rates=(0.01, 0.1), temperatures=(0.1,), probe_epochs=2
    )
    rows, summary = sweep.run_sweep(config)
    assert no_test_split and set(no_test_split) == {"train"}
    assert len(rows) == 2 and {r["status"] for r in rows} == {"COMPLETED"}
    assert sorted(r["learning_rate"] for r in rows) == [0.01, 0.1]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 for r in rows)
    assert rows[0]["val_accuracy"] >= rows[1]["val_accuracy"]  # best first
    with open(tmp_path / "sweep" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["trial"] for row in table] == [r["trial"] for r in rows]
    assert set(table[0]) == {"trial", "temperature", "learning_rate", "batch_size", "augmentation", "epochs", "val_accuracy", "status"}
    markdown = (tmp_path / "sweep" / "results.md").read_text()
    assert "| trial | temperature | learning_rate |" in markdown and "validation split of train" in markdown
    saved = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert saved["spread"]["n"] == 2 and saved["best"]["trial"] == rows[0]["trial"]
    assert saved["spread"]["min"] <= saved["spread"]["mean"] <= saved["spread"]["max"]
    assert summary["spread"] == saved["spread"]


def test_ce_grid_has_no_temperature(tmp_path, no_test_split):
    base = RunConfig(method="ce", model_dir=str(tmp_path / "ce"), **TINY)
    config = sweep.SweepConfig(base=base, tuner="grid", max_trials=5, batch_sizes=(16, 32))
    assert set(config.grids()) == {"learning_rate", "batch_size", "augmentation"}
    rows, _ = sweep.run_sweep(config)
    assert sorted(r["batch_size"] for r in rows) == [16, 32]  # the whole grid, once
    assert "temperature" not in rows[0]


@pytest.mark.slow
def test_hyperband_resumes_trials(tmp_path, no_test_split):
    base = RunConfig(method="simclr", model_dir=str(tmp_path / "hb"), **dict(TINY, epochs=3))
    config = sweep.SweepConfig(
        base=base, tuner="hyperband", learning_rates=(0.01, 0.03, 0.1, 0.3), hyperband_factor=3, probe_epochs=2
    )
    rows, summary = sweep.run_sweep(config)
    assert {r["epochs"] for r in rows} == {1, 3} and summary["spread"]["n"] == len(rows) >= 4


def test_split_is_stratified_disjoint_and_from_train_only(no_test_split):
    split = sweep.split_train_validation(RunConfig(), 0.2, seed=0)
    assert split.num_train + split.num_validation == 1437 and split.num_validation == 288
    train = [(bytes(np.asarray(image)), int(label)) for image, label in split.train]
    validation = [(bytes(np.asarray(image)), int(label)) for image, label in split.validation]
    assert len(train) == split.num_train and len(validation) == split.num_validation
    counts = np.bincount([label for _, label in validation], minlength=10)
    assert counts.min() >= 27 and counts.max() <= 30  # stratified: ~28.8 per class
    all_train_images, _ = data.load_digits("train")
    assert len({image for image, _ in train} | {image for image, _ in validation}) == len(
        {bytes(image) for image in all_train_images}
    )
    again = sweep.split_train_validation(RunConfig(), 0.2, seed=0)
    assert [int(label) for _, label in again.validation] == [label for _, label in validation]


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(tuner="bayesian"), "tuner"),
        (dict(base=RunConfig(method="linear", pretrained="x.keras")), "method"),
        (dict(augmentations=("simclr", "fog")), "augmentation"),
        (dict(batch_sizes=(0,)), "batch_size"),
        (dict(learning_rates=(0.1, 0.1)), "distinct"),
        (dict(validation_fraction=0.6), "validation_fraction"),
        (dict(max_trials=0), "max_trials"),
        (dict(tuner="hyperband", hyperband_factor=3, base=RunConfig(epochs=2)), "hyperband"),
    ],
)
def test_sweep_config_rejects(changes, message):
    values = dict(base=RunConfig())
    values.update(changes)
    with pytest.raises(ValueError, match=message):
        sweep.SweepConfig(**values)


def test_flag_lists_are_parsed_with_named_errors():
    assert sweep._parse_list("batch_size_grid", ["64", "128"], int) == (64, 128)
    with pytest.raises(ValueError, match="`--batch_size_grid` must be a comma-separated list of ints"):
        sweep._parse_list("batch_size_grid", ["64", "big"], int)
    from absl import flags

    assert "tuner" not in flags.FLAGS  # defined by entry() only


def _run_binary(*flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "experiments.sweep", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset=digits_ce", "--temperature_grid=0.1,0.5"], "temperature"),
        (["--preset=digits_supcon", "--learning_rate_grid=fast"], "learning_rate_grid"),
    ],
)
def test_binary_bad_flags_one_line(tmp_path, flags, message):
    result = _run_binary(f"--model_dir={tmp_path}", *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


@pytest.mark.slow
def test_binary_end_to_end(tmp_path):
    result = _run_binary(
        "--preset=digits_ce",
        f"--model_dir={tmp_path}",
        "--tuner=random",
        "--max_trials=2",
        "--learning_rate_grid=0.01,0.1",
        "--epochs=1",
        "--steps_per_epoch=2",
        "--encoder_width=0.25",
        "--verbose=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| trial |" in result.stdout and "2 trials" in result.stdout
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.md").exists()
