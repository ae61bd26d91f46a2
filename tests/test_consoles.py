"""What a user reads on the console: the resume line, epochs counted as Keras shows them, quiet start-up.

Through the binaries, in this process (`run_binary_in_process`) where the
Python-level output is what matters; in a subprocess only where TensorFlow's
C++ start-up lines are (they go to file descriptor 2 before Python sees them).
"""

import math
import os
import re
import shutil
import signal
import warnings

import pytest
from helpers import assert_refused, image_folder, run_binary_in_process, run_python, subprocess_env

from experiments import flagging, plot
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


# ---------------------------------------------------------------------------
# Image folders: what pre-training reads, and the messages of a wrong layout
# ---------------------------------------------------------------------------

FOLDER = ["--preset=digits_supcon", "--dataset=folder", "--epochs=1", "--batch_size=4", "--encoder_width=0.25",
          "--export=false", "--verbose=0"]


def test_pretraining_on_a_folder_without_test_and_with_validation_runs_without_warnings(tmp_path):
    data_dir = image_folder(tmp_path / "images", {"a": 8, "b": 8})
    shutil.rmtree(os.path.join(data_dir, "test"))  # pre-training never reads it
    model_dir = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_binary_in_process(
            "pretrain", f"--model_dir={model_dir}", f"--data_dir={data_dir}", "--validation_fraction=0.5", *FOLDER
        )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not [w for w in caught if "ran out of data" in str(w.message)]  # the validation split's size is known
    with open(model_dir / "training_log.csv") as f:
        header, row = f.read().splitlines()
    assert "val_loss" in header.split(",") and "NA" not in row


def test_without_validation_the_csv_has_no_val_columns(tmp_path):
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", f"--model_dir={model_dir}", *TINY[:-1], "--epochs=1", "--steps_per_epoch=1", "--verbose=0"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    with open(model_dir / "training_log.csv") as f:
        header, row = f.read().splitlines()
    assert header.split(",") == ["epoch", "collapse_share", "loss", "mean_cosine"] and "NA" not in row


def test_a_missing_data_dir_and_one_without_train_get_their_own_line_with_the_layout(tmp_path):
    layout = "an image folder dataset is laid out as DATA_DIR/train/<class>/*.png|jpg"
    missing = run_binary_in_process("pretrain", f"--model_dir={tmp_path / 'r1'}", f"--data_dir={tmp_path / 'no'}",
                                    *FOLDER)
    assert_refused(missing, tmp_path / "r1", f"`data_dir` {tmp_path / 'no'} does not exist; {layout}")
    (tmp_path / "empty").mkdir()
    empty = run_binary_in_process("pretrain", f"--model_dir={tmp_path / 'r2'}", f"--data_dir={tmp_path / 'empty'}",
                                  *FOLDER)
    assert_refused(empty, tmp_path / "r2", f"`data_dir` {tmp_path / 'empty'} has no train/ folder (it is empty); ")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "cat").mkdir()
    flat = run_binary_in_process("pretrain", f"--model_dir={tmp_path / 'r3'}", f"--data_dir={tmp_path / 'flat'}",
                                 *FOLDER)
    assert_refused(flat, tmp_path / "r3", "has no train/ folder (it holds cat); " + layout)


def test_a_one_class_classifier_is_not_told_to_use_simclr(tmp_path):
    data_dir = image_folder(tmp_path / "images", {"a": 4})
    result = run_binary_in_process(
        "train_ce", f"--model_dir={tmp_path / 'run'}", f"--data_dir={data_dir}", *FOLDER[1:], "--preset=digits_ce"
    )
    assert_refused(result, tmp_path / "run", "method 'ce' needs at least 2 classes")
    assert "simclr" not in result.stderr and "a classifier needs images of at least 2 classes" in result.stderr


# ---------------------------------------------------------------------------
# Export and plot
# ---------------------------------------------------------------------------


def test_export_refuses_an_existing_output_naming_the_flag(tmp_path):
    from experiments.export_model import ExportConfig

    model = tmp_path / "model.keras"
    model.write_bytes(b"")
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match=r"pass --overwrite to replace it") as raised:
        ExportConfig(model=str(model), output=str(tmp_path / "out"))
    assert "overwrite=True" not in str(raised.value)
    ExportConfig(model=str(model), output=str(tmp_path / "out"), overwrite=True)


def _write_log(run, header, rows):
    run.mkdir()
    (run / "training_log.csv").write_text("\n".join([header, *rows]) + "\n")


def test_supcon_plot_writes_the_curves_png_and_refuses_what_it_cannot_do(tmp_path):
    run = tmp_path / "run"
    _write_log(run, "epoch,loss,mean_cosine,val_loss,val_mean_cosine", ["0,5.0,0.9,5.1,0.95", "1,4.0,0.8,4.2,0.85"])
    assert plot.curves(run / "training_log.csv") == {
        "loss": {"train": [5.0, 4.0], "validation": [5.1, 4.2]},
        "mean_cosine": {"train": [0.9, 0.8], "validation": [0.95, 0.85]},
    }
    result = run_python("-m", "experiments.plot", str(run))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"wrote {run / 'training_curves.png'}: loss, mean_cosine over 2 epochs"
    assert (run / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(run)) == ["training_curves.png", "training_log.csv"]  # no temporary left
    again = run_python("-m", "experiments.plot", str(run))
    assert again.returncode == 2 and "exists: pass --overwrite to replace it" in again.stderr
    missing = run_python("-m", "experiments.plot", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.strip().endswith("(missing)"), missing.stderr
    no_argument = run_python("-m", "experiments.plot")
    assert no_argument.returncode == 2 and "expected one positional argument RUN" in no_argument.stderr


def test_supcon_plot_leaves_out_all_na_validation_and_reads_na_as_gaps(tmp_path):
    run = tmp_path / "run"
    _write_log(run, "epoch,loss,val_loss", ["0,5.0,NA", "1,NA,NA"])
    panels = plot.curves(run / "training_log.csv")
    assert list(panels["loss"]) == ["train"] and panels["loss"]["train"][0] == 5.0
    assert math.isnan(panels["loss"]["train"][1])


def test_supcon_plot_without_matplotlib_says_so_in_one_line(tmp_path):
    run = tmp_path / "run"
    _write_log(run, "epoch,loss", ["0,5.0"])
    blocker = tmp_path / "no_matplotlib"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    result = run_python("-m", "experiments.plot", str(run), env=subprocess_env(extra_path=(str(blocker),)))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "plot: error: supcon-plot needs matplotlib, which is not installed: pip install matplotlib (or the "
        "project's 'experiments' extra)"
    ]
    assert not (run / "training_curves.png").exists()
