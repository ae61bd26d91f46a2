"""The keras-tuner sweep: trials train only through runner.run and never read the test split; scoring;
divergence and errors; hyperband warm starts; the split; the binary."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from experiments import sweep, training, tuning
from supcon_tf import data, resilience, runner
from supcon_tf.config import RunConfig
from helpers import run_binary_in_process, run_python

TINY = dict(
    epochs=1, steps_per_epoch=2, batch_size=32, encoder_width=0.25, image_size=8, verbose=0, export=False,
    validation_fraction=0.2,
)


def _sweep(tmp_path, method="supcon", name="sweep", **changes):
    base = RunConfig.from_flat(method=method, model_dir=str(tmp_path / name), **TINY)
    values = dict(base=base, probe=training.default_probe(base, epochs=2))
    values.update(changes)
    return tuning.SweepConfig(**values)


@pytest.fixture
def no_test_split(monkeypatch):
    """Every way to the digits test split raises; returns the list of splits that were loaded."""
    loaded = []
    load_digits, load_source = data.load_digits, data.load_source

    def guarded_load_digits(split, **kwargs):
        loaded.append(split)
        if split != "train":
            raise AssertionError(f"the sweep read the {split!r} split")
        return load_digits(split, **kwargs)

    def guarded_load_source(config, split):
        if split != "train":
            raise AssertionError(f"the sweep loaded the {split!r} source")
        return load_source(config, split)

    for module in (data, data.sources):  # the package's name and the one `data.splits` calls
        monkeypatch.setattr(module, "load_digits", guarded_load_digits)
    for module in (data, data.splits):
        monkeypatch.setattr(module, "load_source", guarded_load_source)
    return loaded


@pytest.fixture
def only_runner_fits(monkeypatch):
    """Fails any `fit` outside `runner.run`; returns the configs runner.run was called with."""
    calls, depth = [], [0]
    run, fit = runner.run, keras.Model.fit

    def counting_run(config, **kwargs):
        calls.append(config)
        depth[0] += 1
        try:
            return run(config, **kwargs)
        finally:
            depth[0] -= 1

    def guarded_fit(self, *args, **kwargs):
        if not depth[0]:
            raise AssertionError("a fit outside runner.run")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(runner, "run", counting_run)
    monkeypatch.setattr(keras.Model, "fit", guarded_fit)
    return calls


def test_guards_catch_a_test_read_and_a_fit_outside_the_runner(no_test_split, only_runner_fits):
    with pytest.raises(AssertionError, match="test"):
        data.load_digits("test")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    with pytest.raises(AssertionError, match="outside runner.run"):
        model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0)


@pytest.mark.slow
def test_contrastive_trials_are_a_pretrain_and_a_linear_run_scored_on_validation(
    tmp_path, no_test_split, only_runner_fits
):
    config = _sweep(tmp_path, tuner="random", max_trials=2, learning_rates=(0.01, 0.1), temperatures=(0.1,))
    rows, summary = tuning.run_sweep(config)
    assert no_test_split and set(no_test_split) == {"train"}
    # Two trials, each one pre-training and one linear runner.run, none evaluating the test split.
    assert [c.method for c in only_runner_fits] == ["supcon", "linear"] * 2
    assert not any(c.evaluation.evaluate_test for c in only_runner_fits)
    assert all(c.evaluation.validation_fraction == 0.2 for c in only_runner_fits)
    assert len(rows) == 2 and {r["status"] for r in rows} == {"COMPLETED"}
    assert sorted(r["learning_rate"] for r in rows) == [0.01, 0.1]
    for row in rows:  # the score is the probe's final validation accuracy
        probe_metrics = json.loads(open(os.path.join(row["model_dir"], "linear", "metrics.json")).read())
        assert row["val_accuracy"] == pytest.approx(probe_metrics["final_logs"]["val_accuracy"])
    assert rows[0]["val_accuracy"] >= rows[1]["val_accuracy"]  # best first
    with open(tmp_path / "sweep" / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["trial"] for row in table] == [r["trial"] for r in rows]
    assert set(table[0]) == {
        "trial", "temperature", "learning_rate", "batch_size", "augmentation", "epochs", "warmup_epochs",
        "val_accuracy", "status", "model_dir",
    }
    markdown = (tmp_path / "sweep" / "results.md").read_text()
    assert "| trial | temperature | learning_rate |" in markdown and "validation split of train" in markdown
    saved = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert saved["spread"]["n"] == 2 and saved["best"]["trial"] == rows[0]["trial"]
    assert summary["spread"] == saved["spread"]


@pytest.mark.slow
def test_ce_grid_with_epochs_and_a_probe(tmp_path, no_test_split, only_runner_fits):
    config = _sweep(tmp_path, "ce", tuner="grid", max_trials=5, epochs=(1, 2), probe_ce=True)
    assert set(config.grids()) == {"learning_rate", "batch_size", "augmentation", "epochs", "warmup_epochs"}
    rows, _ = tuning.run_sweep(config)
    assert sorted(r["epochs"] for r in rows) == [1, 2]  # the whole grid, once
    assert "temperature" not in rows[0]
    for row in rows:  # CE is scored by its probe here; its own classifier's score is kept
        metrics = json.loads(open(os.path.join(row["model_dir"], "metrics.json")).read())
        assert row["classifier_val_accuracy"] == pytest.approx(metrics["final_logs"]["val_accuracy"])
        assert metrics["epochs"] == row["epochs"]
    assert [c.method for c in only_runner_fits] == ["ce", "linear"] * 2


@pytest.mark.slow  # a search of real trials of several seconds (BUILD_NOTES.md: which tests are slow)
def test_a_diverged_trial_fails_and_the_search_goes_on(tmp_path, monkeypatch):
    run = runner.run

    def diverging_run(config, **kwargs):
        if config.method == "ce" and config.optim.learning_rate == 0.5:
            raise resilience.Diverged(0, 1, float("nan"), 0.5, "not finite")
        return run(config, **kwargs)

    monkeypatch.setattr(runner, "run", diverging_run)
    rows, summary = tuning.run_sweep(_sweep(tmp_path, "ce", tuner="grid", max_trials=2, learning_rates=(0.01, 0.5)))
    by_rate = {r["learning_rate"]: r for r in rows}
    assert by_rate[0.5]["status"] == "FAILED" and by_rate[0.5]["val_accuracy"] is None
    assert by_rate[0.01]["status"] == "COMPLETED" and summary["spread"]["n"] == 1


def test_other_errors_end_the_search_with_their_own_type(tmp_path, monkeypatch):
    def broken_run(config, **kwargs):
        raise FileNotFoundError("no such data")

    monkeypatch.setattr(runner, "run", broken_run)
    with pytest.raises(FileNotFoundError, match="no such data"):
        tuning.run_sweep(_sweep(tmp_path, "ce", tuner="grid", max_trials=2, learning_rates=(0.01, 0.5)))


@pytest.mark.slow  # a search of real trials of several seconds (BUILD_NOTES.md: which tests are slow)
def test_callbacks_reach_the_training_stage_only(tmp_path):
    seen = []

    class Marker(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            seen.append(self.model.__class__.__name__)

    config = _sweep(tmp_path, tuner="grid", max_trials=1)
    tuning.run_sweep(config, callbacks=lambda stage: [Marker()])
    assert seen == ["SupConModel"]


@pytest.mark.slow  # a search of real trials of several seconds (BUILD_NOTES.md: which tests are slow)
def test_an_interrupted_sweep_resumes_its_finished_trials(tmp_path, only_runner_fits):
    config = _sweep(tmp_path, "ce", tuner="grid", max_trials=2, learning_rates=(0.01, 0.1))
    first, _ = tuning.run_sweep(config)
    calls = len(only_runner_fits)
    again, _ = tuning.run_sweep(config, overwrite=False)  # finished: nothing trains again
    assert len(only_runner_fits) == calls and [r["val_accuracy"] for r in again] == [r["val_accuracy"] for r in first]


@pytest.mark.slow
def test_hyperband_promotes_trials_with_their_encoder(tmp_path, no_test_split):
    # max_epochs 3, factor 3: bracket 1 runs 3 trials of 1 epoch and promotes the best to 3 epochs (4 trials);
    # with 3 learning rates bracket 0 finds no new value and the search stops (a 4th rate added a random 3-epoch
    # trial that promotes nothing).
    config = _sweep(
        tmp_path, "simclr", tuner="hyperband", learning_rates=(0.01, 0.1, 0.3), hyperband_factor=3,
        base=RunConfig.from_flat(method="simclr", model_dir=str(tmp_path / "hb"), **dict(TINY, epochs=3)),
    )
    rows, summary = tuning.run_sweep(config)
    assert {r["epochs"] for r in rows} == {1, 3} and summary["spread"]["n"] == len(rows) >= 4
    promoted = [r for r in rows if r["epochs"] == 3]
    warm = [json.loads(open(os.path.join(r["model_dir"], "config.json")).read())["encoder_weights"] for r in promoted]
    assert any(w and w.endswith("model.keras") for w in warm)


def test_split_is_stratified_disjoint_and_from_train_only(no_test_split):
    split = data.split_train_validation(RunConfig(), 0.2, seed=0)
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


def test_probe_follows_the_stage_it_scores(tmp_path):
    config = _sweep(tmp_path)
    stage = config.base.replace(model_dir=str(tmp_path / "trial"), seed=3)
    probe = training.probe_for(stage, config.probe)
    assert probe.method == "linear" and probe.evaluation.pretrained == str(tmp_path / "trial" / "model.keras")
    assert probe.runtime.seed == 3 and probe.evaluation.validation_fraction == 0.2 and not probe.evaluation.evaluate_test
    assert probe.data.image_size == stage.data.image_size and probe.optim.epochs == 2


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(tuner="bayesian"), "tuner"),
        (dict(base=RunConfig.from_flat(method="linear", pretrained="x.keras", validation_fraction=0.2)), "method"),
        (dict(base=RunConfig.from_flat(validation_fraction=0.0)), "validation_fraction"),
        (dict(augmentations=("simclr", "fog")), "augmentation"),
        (dict(batch_sizes=(0,)), "batch_size"),
        (dict(learning_rates=(0.1, 0.1)), "distinct"),
        (dict(max_trials=0), "max_trials"),
        (dict(base=RunConfig.from_flat(method="ce", validation_fraction=0.2), temperatures=(0.1,)), "temperature"),
        (dict(probe=RunConfig.from_flat(method="ce")), "probe"),
        (dict(tuner="hyperband", epochs=(1, 2)), "hyperband"),
        (dict(tuner="hyperband", hyperband_factor=3, base=RunConfig.from_flat(epochs=2, validation_fraction=0.2)), "hyperband"),
    ],
)
def test_sweep_config_rejects(changes, message):
    values = dict(base=RunConfig.from_flat(validation_fraction=0.2))
    values.update(changes)
    with pytest.raises(ValueError, match=message):
        tuning.SweepConfig(**values)


def test_sweep_never_evaluates_the_test_split():
    config = tuning.SweepConfig(base=RunConfig.from_flat(validation_fraction=0.2, evaluate_test=True))
    assert config.base.evaluation.evaluate_test is False and config.probe.evaluation.evaluate_test is False


def test_flag_lists_are_parsed_with_named_errors():
    assert sweep._parse_list("batch_size_grid", ["64", "128"], int) == (64, 128)
    with pytest.raises(ValueError, match="`--batch_size_grid` must be a comma-separated list of ints"):
        sweep._parse_list("batch_size_grid", ["64", "big"], int)
    from absl import flags

    assert "tuner" not in flags.FLAGS  # defined by entry() only


def _run_binary(*flags):
    return run_python("-m", "experiments.sweep", *flags, timeout=600)


def _run_binary_in_process(*flags):
    """`_run_binary` through the sweep's entry in this process: its flags, its one error line and exit status."""
    return run_binary_in_process("sweep", *flags)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset=digits_ce", "--temperature_grid=0.1,0.5"], "temperature"),
        (["--preset=digits_supcon", "--learning_rate_grid=fast"], "learning_rate_grid"),
    ],
)
def test_binary_bad_flags_one_line(tmp_path, flags, message):
    result = _run_binary_in_process(f"--model_dir={tmp_path}", *flags)
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
        "--image_size=8",
        "--verbose=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| trial |" in result.stdout and "2 trials" in result.stdout
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.md").exists()
