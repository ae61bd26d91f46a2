"""What a user reads on the console: the resume line, epochs counted as Keras shows them, quiet start-up.

Through the binaries, in this process (`run_binary_in_process`) where the
Python-level output is what matters; in a subprocess only where TensorFlow's
C++ start-up lines are (they go to file descriptor 2 before Python sees them).
"""

import os
import re
import signal

import pytest
from helpers import run_binary_in_process, run_python, subprocess_env

from experiments import flagging
from supcon_tf import checkpointing

TINY = [
    "--preset=digits_supcon", "--epochs=2", "--steps_per_epoch=2", "--batch_size=32", "--encoder_width=0.25",
    "--backup_every_steps=1", "--export=false",
]


def _signal_at(monkeypatch, global_step, signum=signal.SIGINT):
    """Delivers `signum` to the training loop right after `global_step` (as the OS would, through its watcher)."""
    original = checkpointing.StepBackup.on_train_batch_end

    def on_train_batch_end(self, batch, logs=None):
        if self.position(self._epoch, batch)[1] == global_step:
            self.signals.received = signum
        return original(self, batch, logs)

    monkeypatch.setattr(checkpointing.StepBackup, "on_train_batch_end", on_train_batch_end)


@pytest.mark.slow
def test_an_interrupted_run_names_the_epoch_as_keras_shows_it_on_its_own_line_and_the_rerun_says_it_resumes(
    tmp_path, monkeypatch
):
    model_dir = str(tmp_path / "run")
    with monkeypatch.context() as patch:
        _signal_at(patch, 3)  # global step 3 = the first step of the second epoch, which Keras shows as "Epoch 2/2"
        interrupted = run_binary_in_process("pretrain", f"--model_dir={model_dir}", *TINY, "--verbose=1")
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    assert "Epoch 2/2" in interrupted.stdout
    assert interrupted.stdout.endswith("\n"), interrupted.stdout[-300:]  # the progress bar's line is ended
    assert interrupted.stderr.strip().splitlines() == [
        "interrupted at epoch 2 step 1; run the same command to resume"
    ]

    resumed = run_binary_in_process("pretrain", f"--model_dir={model_dir}", *TINY, "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    lines = resumed.stdout.splitlines()
    assert re.fullmatch(
        r"resuming from epoch 2 step 1 of 2 \(backup written at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d\)",
        lines[0],
    ), lines
    assert lines[-1].startswith("pre-training done:"), lines


@pytest.mark.parametrize(
    "step, interrupted_line, resume_start",
    [
        pytest.param(2, "interrupted at epoch 1 step 2", "resuming from epoch 2 step 0 of 2 (backup written at ",
                     marks=pytest.mark.slow),
        (4, "interrupted at epoch 2 step 2", "resuming after the last epoch (2): training is complete (backup "),
    ],
)
def test_a_signal_at_an_epochs_last_step_stops_after_its_end(tmp_path, monkeypatch, step, interrupted_line,
                                                             resume_start):
    model_dir = str(tmp_path / "run")
    with monkeypatch.context() as patch:
        _signal_at(patch, step)
        interrupted = run_binary_in_process("pretrain", f"--model_dir={model_dir}", *TINY, "--verbose=0")
    assert interrupted.returncode == 130, interrupted.stderr[-2000:]
    assert interrupted.stderr.strip() == f"{interrupted_line}; run the same command to resume"
    resumed = run_binary_in_process("pretrain", f"--model_dir={model_dir}", *TINY, "--verbose=0")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert resumed.stdout.splitlines()[0].startswith(resume_start), resumed.stdout
    with open(os.path.join(model_dir, "training_log.csv")) as f:
        assert [row.split(",")[0] for row in f.read().splitlines()[1:]] == ["0", "1"]


# ---------------------------------------------------------------------------
# Quiet start-up
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["prog"], None),
        (["prog", "-v", "1"], 1),
        (["prog", "-v1"], 1),
        (["prog", "-v=2"], 2),
        (["prog", "--verbosity", "0"], 0),
        (["prog", "--verbosity=-1", "--epochs=3"], -1),
        (["prog", "--verbose=2"], None),  # Keras' progress display, not absl's verbosity
        (["prog", "-v", "x"], None),
        (["prog", "--", "-v", "1"], None),
    ],
)
def test_requested_verbosity_reads_absls_flag_as_absl_will(argv, expected):
    assert flagging.requested_verbosity(argv) == expected


def test_the_environment_defaults_are_quiet_unless_v_1_and_the_users_value_wins():
    quiet, loud, users = {}, {}, {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert flagging.quiet_consoles(["prog"], quiet)
    assert quiet == flagging.BINARY_ENVIRONMENT and quiet["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert not flagging.quiet_consoles(["prog", "-v", "1"], loud)
    assert "TF_CPP_MIN_LOG_LEVEL" not in loud and loud["TF_ENABLE_ONEDNN_OPTS"] == "1"
    flagging.quiet_consoles(["prog"], users)
    assert users["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_import_notices_are_held_back_and_other_lines_kept(capfd):
    notices = (
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
        "I0000 00:00:1796637436.619909   18566 port.cc:153] oneDNN custom operations are on.\n"
    )
    with flagging._held_stderr():
        import os

        os.write(2, (notices + "W0000 00:00:1.5 1 x.cc:1] a warning stays\n" + notices).encode())
    assert capfd.readouterr().err == "W0000 00:00:1.5 1 x.cc:1] a warning stays\n"
    with pytest.raises(ImportError):
        with flagging._held_stderr():
            os.write(2, notices.encode())
            raise ImportError("no tensorflow")
    assert capfd.readouterr().err == notices  # a failed import shows everything


@pytest.mark.slow
def test_an_export_prints_no_tensorflow_start_up_or_info_lines_and_v_1_restores_them(tmp_path):
    """A subprocess with the user's environment (no TF_CPP_MIN_LOG_LEVEL): what a console shows."""
    from supcon_tf.encoders import build_encoder

    model_path = str(tmp_path / "encoder.keras")
    build_encoder("small_cnn", (8, 8, 1), width=0.25).save(model_path)
    env = subprocess_env()
    del env["TF_CPP_MIN_LOG_LEVEL"]
    quiet = run_python("-m", "experiments.export_model", f"--model={model_path}", f"--output={tmp_path / 'quiet'}",
                       env=env)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr == "", quiet.stderr[-2000:]
    loud = run_python("-m", "experiments.export_model", f"--model={model_path}", f"--output={tmp_path / 'loud'}",
                      "-v", "1", env=env)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "Assets written to" in loud.stderr  # TensorFlow's INFO lines of a SavedModel export
