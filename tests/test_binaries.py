"""The training binaries end to end on digits (a few steps), and every documented bad flag.

The training runs go through each binary's entry in this process (`helpers.run_binary_in_process`: its flags,
output and exit status; a subprocess would only add a TensorFlow import); the console-script path (a real
interpreter: exit status, --helpfull) runs in subprocesses.
"""

import json
import os

import numpy as np
import pytest

from experiments import presets
from helpers import run_binary_in_process, run_python

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("binaries")

TINY = ["--epochs=1", "--steps_per_epoch=2", "--batch_size=64", "--verbose=2", "--encoder_width=0.25"]


def _run(module, *flags, timeout=300):
    return run_python("-m", f"experiments.{module}", *flags, timeout=timeout)


def _assert_run_folder(model_dir, saved_model=True):
    names = set(os.listdir(model_dir))
    expected = {
        "config.json", "run_state.json", "checkpoints", "logs", "training_log.csv", "model.keras", "metrics.json",
        "FINISHED",
    }
    assert expected <= names, names
    assert "backup" not in names  # deleted after the FINISHED marker
    assert ("saved_model" in names) == saved_model
    assert os.path.exists(os.path.join(model_dir, "checkpoints", "latest.keras"))
    assert os.listdir(os.path.join(model_dir, "logs", "worker_0"))  # TensorBoard event files
    assert not [n for n in names if n.startswith(".tmp-")]
    return json.load(open(os.path.join(model_dir, "config.json"))), json.load(open(os.path.join(model_dir, "metrics.json")))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("runs") / "supcon"
    result = run_binary_in_process("pretrain", "--preset=digits_supcon", f"--model_dir={model_dir}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result


def test_pretrain_writes_everything_and_shows_progress(pretrained):
    model_dir, result = pretrained
    config, metrics = _assert_run_folder(model_dir)
    assert config["method"] == "supcon" and config["epochs"] == 1 and config["temperature"] == presets.get_preset("digits_supcon")["temperature"]
    assert config["crop_scale_min"] == 0.4  # from the preset
    assert np.isfinite(metrics["final_train_loss"])
    assert "2/2 - " in result.stdout and "loss:" in result.stdout  # Keras per-epoch progress line
    assert "pre-training done" in result.stdout


def test_linear_eval_on_the_pretrained_encoder(pretrained, tmp_path):
    model_dir, _ = pretrained
    result = run_binary_in_process(
        "linear_eval",
        "--preset=digits_linear",
        f"--pretrained={model_dir / 'model.keras'}",
        f"--model_dir={tmp_path / 'linear'}",
        "--epochs=2",
        "--verbose=0",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.load(open(tmp_path / "linear" / "metrics.json"))
    assert 0.0 <= metrics["test_top1"] <= 1.0
    assert "test top-1" in result.stdout
    assert os.path.exists(tmp_path / "linear" / "saved_model" / "saved_model.pb")


def test_train_ce_and_export_binary(tmp_path):
    result = run_binary_in_process("train_ce", "--preset=digits_ce", f"--model_dir={tmp_path / 'ce'}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    _, metrics = _assert_run_folder(tmp_path / "ce")
    assert 0.0 <= metrics["test_top1"] <= 1.0
    result = run_binary_in_process(
        "export_model", f"--model={tmp_path / 'ce' / 'model.keras'}", f"--output={tmp_path / 'exported'}"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(tmp_path / "exported" / "saved_model.pb")
    again = run_binary_in_process(
        "export_model", f"--model={tmp_path / 'ce' / 'model.keras'}", f"--output={tmp_path / 'exported'}"
    )
    assert again.returncode == 2 and "exist" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow  # a console script: a fresh interpreter imports TensorFlow
def test_helpfull_is_readable():
    result = _run("pretrain", "--helpfull")  # absl exits with status 1 after printing the help
    assert "Traceback" not in result.stderr
    assert "--preset" in result.stdout and "--temperature" in result.stdout and "cifar10_supcon" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset=cifar11_supcon"], "preset"),
        (["--dataset=mnist"], "dataset"),
        (["--learning_rate=0"], "learning_rate"),
        (["--learning_rate=-0.1"], "learning_rate"),
        (["--temperature=0"], "temperature"),
        (["--temperature=-1"], "temperature"),
        (["--strategy=mirrored", "--cpu_devices=2", "--batch_size=63"], "divisible"),
        (["--dataset=folder", "--data_dir=/nonexistent/images"], "/nonexistent/images"),
        (["--dataset=cifar10", "--data_dir={tmp}/tfds"], "download_and_prepare"),
        (["--method=ce"], "method"),
    ],
)
def test_bad_flags_exit_nonzero_with_one_line(tmp_path, flags, message):
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    # In-process: the binary's entry under absl's flag parser gives the line and status the console script gives;
    # the first case also runs as the console script (a subprocess), which proves that path.
    results = [run_binary_in_process("pretrain", f"--model_dir={tmp_path / 'run'}", *flags)]
    if message == "preset":
        results.append(_run("pretrain", f"--model_dir={tmp_path / 'run'}", *flags, timeout=120))
    for result in results:
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]
        assert not os.path.exists(tmp_path / "run" / "model.keras")
