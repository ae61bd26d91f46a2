"""The main job runs end to end (tiny settings) and writes what README promises.

The demo runs through its entry in this process (`helpers.run_binary_in_process`: its flags, output and exit
status); a subprocess would only add a TensorFlow import per run.
"""

import json
import os

import pytest
from helpers import run_binary_in_process



def _run_demo(tmp_path, *flags):
    return run_binary_in_process("demo", f"--output_dir={tmp_path}", *flags)


@pytest.mark.slow  # an end-to-end run of several seconds (BUILD_NOTES.md: which tests are slow)
def test_demo_end_to_end_tiny(tmp_path):
    result = _run_demo(
        tmp_path, "--epochs=1", "--probe_epochs=2", "--methods=supcon,ce", "--batch_size=256", "--verbose=0"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| supcon |" in result.stdout and "| ce |" in result.stdout
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["method"] for row in metrics["results"]] == ["supcon", "ce"]
    assert all(0.0 <= row["test_top1"] <= 1.0 for row in metrics["results"])
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 1
    assert (tmp_path / "supcon" / "model.keras").stat().st_size > 0  # encoder + head
    assert (tmp_path / "supcon" / "linear" / "model.keras").stat().st_size > 0  # frozen encoder + classifier
    assert (tmp_path / "ce" / "model.keras").stat().st_size > 0  # encoder + classifier
    assert not os.path.exists(tmp_path / "ce" / "backup" / "worker_0")  # finished runs leave no backup


@pytest.mark.parametrize(
    "flag, message",
    [("--epochs=0", "epochs"), ("--methods=supcon,moco", "methods"), ("--image_size=4", "image_size")],
)
def test_demo_rejects_bad_flags_with_one_line(tmp_path, flag, message):
    result = _run_demo(tmp_path, flag)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
