"""Runs that survive any kill: the run-folder lifecycle through the real binary, under injected faults.

Every test runs `python -m experiments.pretrain` (or train_ce / linear_eval)
on the bundled digits, with TensorFlow op determinism on, and compares the
end weights against an uninterrupted run of the same command. A fault spec
`<point>` makes the process SIGKILL itself at a named point
(tests/fault_injection.py, the hook of `supcon_tf._faults`): every run that is
killed, signalled or stopped by an injected fault is a real process
(`_run`); the runs that only resume, finish, compare or get refused run the
binary's entry in this process (`_run_in_process`), which saves each a
TensorFlow start-up. These tests start tens of processes; they are marked slow
and run in CI's second stage.
"""

import csv
import glob
import json
import os
import signal
import time

import numpy as np
import pytest
from helpers import assert_refused, image_folder, run_binary_in_process, run_python, session_folder, start_python

EPOCHS, STEPS, EVERY = 3, 4, 2
TINY = [
    "--preset=digits_supcon",
    f"--epochs={EPOCHS}",
    f"--steps_per_epoch={STEPS}",
    "--batch_size=32",
    "--encoder_width=0.25",
    f"--backup_every_steps={EVERY}",
    "--deterministic",
    "--verbose=0",
]

pytestmark = pytest.mark.slow


def _run(model_dir, *flags, fault=None, module="pretrain", timeout=300):
    return run_python("-m", f"experiments.{module}", f"--model_dir={model_dir}", *TINY, *flags, fault=fault,
                      timeout=timeout)


def _run_in_process(model_dir, *flags, module="pretrain"):
    """`_run` through the binary's entry in this process: for the runs that need no process of their own."""
    return run_binary_in_process(module, f"--model_dir={model_dir}", *TINY, *flags)


def _weights(model_dir):
    import keras

    import supcon_tf  # noqa: F401  (registers the classes)

    return keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False).get_weights()


def _max_difference(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def _csv_epochs(model_dir):
    with open(os.path.join(model_dir, "training_log.csv"), newline="") as f:
        return [int(row["epoch"]) for row in csv.DictReader(f)]


def _csv_rows(model_dir):
    with open(os.path.join(model_dir, "training_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _leftovers(model_dir):
    found = glob.glob(os.path.join(model_dir, "**", ".tmp-*"), recursive=True)
    return found + glob.glob(os.path.join(model_dir, "**", ".old-*"), recursive=True)


def _state(model_dir):
    with open(os.path.join(model_dir, "run_state.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its weights and CSV rows.

    Trained once per test session: under pytest-xdist the workers share the session's base folder, and the first
    worker to get here trains the run while the others wait on the lock, then read it.
    """
    with session_folder(tmp_path_factory, "lifecycle-reference") as folder:
        model_dir = folder / "run"
        if not os.path.exists(model_dir / "FINISHED"):
            result = _run_in_process(model_dir)
            assert result.returncode == 0, result.stderr[-3000:]
    return {"dir": model_dir, "weights": _weights(model_dir), "rows": _csv_rows(model_dir)}


def _assert_finished_like(model_dir, reference, restarts):
    assert os.path.exists(os.path.join(model_dir, "FINISHED"))
    assert not os.path.exists(os.path.join(model_dir, "backup"))  # deleted after the marker
    assert not _leftovers(model_dir), _leftovers(model_dir)
    assert _csv_epochs(model_dir) == list(range(EPOCHS))  # each epoch exactly once
    difference = _max_difference(_weights(model_dir), reference["weights"])
    assert difference <= 1e-5, difference
    # The epochs' mean losses are those of the uninterrupted run (partial epochs restore their running means).
    for row, expected in zip(_csv_rows(model_dir), reference["rows"]):
        np.testing.assert_allclose(float(row["loss"]), float(expected["loss"]), rtol=1e-5)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["restarts"] == restarts
    assert metrics["train_seconds"] > 0
    assert os.path.isdir(os.path.join(model_dir, "saved_model"))
    return difference


# Fault point -> its occurrence to kill at, and the global step the restart must resume from.
# Backups: every 2 steps inside an epoch and at each epoch end (4 steps per epoch);
# the CSV row and checkpoint of an epoch are written before its end-of-epoch backup.
FAULTS = {
    "backup_write:3": 4,  # 3rd backup (global step 6, inside epoch 1) killed mid-write -> the one at 4
    "checkpoint_write:2": 6,  # end of epoch 1 checkpoint: newest backup is global step 6
    "csv_append:2": 6,  # the row of epoch 1 torn: resume at step 6, the row rewritten once
    "final_model_save": 12,  # training complete: the restart only writes the outputs
    "saved_model_export": 12,
    "metrics_write": 12,
    "finished_marker": None,  # every output written: the restart only writes the marker (no resume, no retraining)
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_kill_at_each_write_point_resumes_and_matches(tmp_path, reference, fault):
    model_dir = tmp_path / "run"
    killed = _run(model_dir, fault=fault)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert not os.path.exists(model_dir / "FINISHED")
    resumed = _run_in_process(model_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumes = _state(model_dir).get("resumes", [])
    if FAULTS[fault] is None:
        assert resumes == [] and "already finished" in resumed.stdout
        difference = _assert_finished_like(model_dir, reference, restarts=0)
        print(f"fault {fault}: completed without training; max weight difference {difference:.3g}")
        return
    assert [r["global_step"] for r in resumes] == [FAULTS[fault]], resumes
    difference = _assert_finished_like(model_dir, reference, restarts=1)
    print(f"fault {fault}: resumed at global step {resumes[0]['global_step']} (epoch {resumes[0]['epoch']} "
          f"step {resumes[0]['step']}); max weight difference {difference:.3g}")


def test_random_kills_inside_epochs(tmp_path, reference):
    """Five SIGKILLs at steps drawn with a fixed seed, each before that step runs; then a clean finish."""
    rng = np.random.default_rng(2026)
    kill_steps = sorted(rng.choice(np.arange(1, EPOCHS * STEPS), size=5, replace=False).tolist())
    model_dir = tmp_path / "run"
    for step in kill_steps:
        killed = _run(model_dir, fault=f"step:{step}")
        assert killed.returncode == -signal.SIGKILL, (step, killed.returncode, killed.stderr[-2000:])
    finished = _run_in_process(model_dir)
    assert finished.returncode == 0, finished.stderr[-3000:]
    resumes = [r["global_step"] for r in _state(model_dir).get("resumes", [])]
    difference = _assert_finished_like(model_dir, reference, restarts=len(kill_steps))
    print(f"kills before steps {kill_steps}: resumed at global steps {resumes}; max weight difference {difference:.3g}")
    # A kill before step k leaves the backups up to step k (every EVERY steps and at epoch ends, all even
    # here); each restart resumes from the newest one, and a kill before the first backup starts afresh.
    expected = [k - k % EVERY for k in kill_steps if k >= EVERY]
    assert resumes == expected, (kill_steps, resumes)


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_writes_a_backup_at_the_step_and_resumes(tmp_path, reference, signum, status):
    model_dir = tmp_path / "run"
    # Slow steps (0.3 s of sleep per step, test-only) leave time to signal mid-epoch.
    process = start_python("-m", "experiments.pretrain", f"--model_dir={model_dir}", *TINY, fault="slow_steps:300")
    deadline = time.time() + 120
    backups = os.path.join(model_dir, "backup", "worker_0")
    while time.time() < deadline and not (os.path.isdir(backups) and os.listdir(backups)):
        time.sleep(0.05)
    sent = time.time()
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    grace = time.time() - sent
    assert process.returncode == status, (process.returncode, stderr[-2000:])
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    message = [line for line in lines if line.startswith("interrupted at epoch")]
    assert message and message[-1].endswith("; run the same command to resume"), stderr[-2000:]
    print(f"{signal.Signals(signum).name}: exit {process.returncode} after {grace:.2f} s: {message[-1]}")
    resumed = _run_in_process(model_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_finished_like(model_dir, reference, restarts=1)


def test_injected_nan_stops_the_run_and_it_resumes(tmp_path, reference):
    model_dir = tmp_path / "run"
    diverged = _run(model_dir, fault="nan_loss:5")
    assert diverged.returncode == 3, diverged.stderr[-2000:]
    line = diverged.stderr.strip().splitlines()[-1]
    assert "training diverged at epoch 2 step 1: loss nan (not finite), learning rate" in line, line
    assert "Traceback" not in diverged.stderr
    assert not os.path.exists(model_dir / "FINISHED")
    resumed = _run_in_process(model_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # The NaN loss of step 5 was computed with the weights saved at step 4, so that state is dropped too: the run
    # resumes from step 2, the newest state a later finite loss vouches for.
    assert [r["global_step"] for r in _state(model_dir)["resumes"]] == [2]
    _assert_finished_like(model_dir, reference, restarts=1)


def test_exploding_loss_stops_with_one_line_and_resumes_after_a_flag_change(tmp_path):
    """The CE baseline at a huge learning rate: the loss grows past the bound; a sane rate then finishes the run.

    Both runs in this process: the exit status and one line of a divergence in a real process are
    test_injected_nan_stops_the_run_and_it_resumes's."""
    model_dir = tmp_path / "ce"
    # No warm-up: the huge rate must act from the first step (with warm-up it grows into the weights unnoticed).
    flags = ["--preset=digits_ce", "--epochs=3", "--backup_every_steps=1", "--warmup_epochs=0"]
    result = _run_in_process(model_dir, *flags, "--learning_rate=1000", module="train_ce")
    assert result.returncode == 3, (result.returncode, result.stderr[-2000:])
    line = result.stderr.strip().splitlines()[-1]
    assert "training diverged at epoch" in line and "learning rate" in line, line
    assert "Traceback" not in result.stderr
    assert _state(model_dir)["phase"] == "running" and not os.path.exists(model_dir / "FINISHED")
    resumed = _run_in_process(model_dir, *flags, "--learning_rate=0.05", module="train_ce")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert os.path.exists(model_dir / "FINISHED")
    assert _csv_epochs(model_dir) == list(range(3))
    assert _state(model_dir)["config_changes"][0]["changed"]["learning_rate"] == [1000.0, 0.05]


def test_finished_run_is_left_alone_unless_overwrite(tmp_path, reference):
    model_dir = tmp_path / "run"
    assert _run_in_process(model_dir).returncode == 0

    def snapshot():
        files = {}
        for path in sorted(glob.glob(os.path.join(model_dir, "**"), recursive=True)):
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    files[os.path.relpath(path, model_dir)] = f.read()
        return files

    before = snapshot()
    again = _run_in_process(model_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished; nothing changed" in again.stdout
    assert snapshot() == before  # byte-identical
    fresh = _run_in_process(model_dir, "--overwrite")
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert _state(model_dir)["restarts"] == 0 and "resumes" not in _state(model_dir)
    assert _csv_epochs(model_dir) == list(range(EPOCHS))
    assert not _leftovers(model_dir) and os.listdir(tmp_path) == ["run"]  # the replaced run is gone once this one finished
    assert _max_difference(_weights(model_dir), reference["weights"]) <= 1e-5


def test_changed_structure_of_an_unfinished_run_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    assert _run(model_dir, fault="step:3").returncode == -signal.SIGKILL
    result = _run_in_process(model_dir, "--embedding_dim=32")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "holds an unfinished run with other settings (embedding_dim=64 -> 32); resume it with its own settings, "
        "or pass --overwrite to start afresh (the old run is kept beside it until the new one finishes)"
    )


# ---------------------------------------------------------------------------
# Up-front checks: one line naming the flag or folder, exit 2, nothing written. The console-script path of each
# training binary, in a subprocess; the other refusals run in-process in tests/test_refusals.py.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("module, flags", [
    ("train_ce", ["--preset=digits_ce"]),
    ("pretrain", ["--preset=digits_supcon"]),
    ("linear_eval", ["--preset=digits_linear", "--pretrained=missing/model.keras"]),
])
def test_single_class_folder(tmp_path, module, flags):
    data_dir = image_folder(tmp_path / "images", {"only": 6})
    model_dir = tmp_path / "run"
    result = _run(model_dir, *flags, "--dataset=folder", f"--data_dir={data_dir}", "--batch_size=4",
                  "--image_size=8", module=module)
    method = {"train_ce": "ce", "pretrain": "supcon", "linear_eval": "linear"}[module]
    assert_refused(result, model_dir, f"image folder '{data_dir}/train' has 1 class folder (only): method "
                                       f"'{method}' needs at least 2 classes")


def test_linear_eval_takes_the_data_settings_of_the_run_it_evaluates(tmp_path):
    pretrain_dir = tmp_path / "pretrain"
    assert _run_in_process(pretrain_dir, "--image_size=12", "--epochs=1").returncode == 0
    linear_dir = tmp_path / "linear"
    result = _run_in_process(linear_dir, "--preset=digits_linear", f"--pretrained={pretrain_dir}/model.keras", "--epochs=3",
                  module="linear_eval")
    assert result.returncode == 0, result.stderr[-3000:]
    with open(linear_dir / "config.json") as f:
        config = json.load(f)
    assert (config["dataset"], config["image_size"]) == ("digits", 12)
    # The linear stage has the same run folder as the others: checkpoints, logs, CSV, marker.
    assert _csv_epochs(linear_dir) == [0, 1, 2]
    assert os.path.exists(linear_dir / "checkpoints" / "latest.keras")
    assert os.listdir(linear_dir / "logs" / "worker_0")
    assert os.path.exists(linear_dir / "FINISHED")
    # An explicit flag still wins over the inherited value, and must then match the encoder's input.
    refused = _run_in_process(tmp_path / "linear2", "--preset=digits_linear", f"--pretrained={pretrain_dir}/model.keras",
                   "--image_size=16", module="linear_eval")
    assert_refused(refused, tmp_path / "linear2", "`image_size` / `channels` give images (16, 16, 1), but the "
                                                   "pretrained encoder in")
