"""Errors at the binaries' top level: one line naming path and cause, an exit status per kind, the traceback kept.

The table of statuses and the classification live in `supcon_tf/errors.py`;
`experiments/flagging.py` (`absl_main`, `report_error`) prints the line and
appends the traceback to `<model_dir>/error.log` of a run folder the project
created, or prints it to stderr. `supcon_tf.encoders.load_pretrained_encoder`
refuses a bad `--pretrained` file before any training. The end-to-end tests
run the binaries' own entries on the bundled digits for a few steps, in this
process (`helpers.run_binary_in_process`: the same flags, the same one line
and exit status as `python -m experiments.<binary>`; a subprocess would add
only TensorFlow's start-up); the fault specs `disk_full:<point>` /
`internal_error:<point>` of tests/fault_injection.py, installed as the
library's fault hook, make a write fail as on a full disk, or raise an
unexpected error there. That a console script's process exits with the
binary's status is checked by tests/test_run_lifecycle.py
(`test_single_class_folder`).
"""

import contextlib
import errno
import json
import os
import sys
import zipfile

import numpy as np
import pytest

from experiments import flagging
from supcon_tf import _faults, checkpointing, errors, resilience, run_folder
from supcon_tf.encoders import build_encoder, load_pretrained_encoder
from supcon_tf.errors import BadInputFile
from fault_injection import FaultInjector
from helpers import run_binary_in_process, run_python

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("errors")

TINY = [
    "--preset=digits_supcon", "--epochs=2", "--steps_per_epoch=2", "--batch_size=32", "--encoder_width=0.25",
    "--backup_every_steps=1", "--verbose=0",
]


def _run(module, *flags, fault=None):
    """`run_binary_in_process(module, *flags)`, with the tests/fault_injection.py spec `fault` installed."""
    hook = _faults.installed(FaultInjector(fault)) if fault else contextlib.nullcontext()
    with hook:
        return run_binary_in_process(module, *flags)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if ": error: " in line or ": internal error: " in line]


def _one_error_line(result):
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------------------
# The table and the classification.
# ---------------------------------------------------------------------------


def test_one_table_of_distinct_statuses_shared_by_the_library_and_the_binaries():
    statuses = [errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_BAD_INPUT, errors.EXIT_DIVERGED,
                errors.EXIT_STORAGE, errors.EXIT_BAD_FILE, errors.EXIT_COLLAPSED, errors.EXIT_SIGINT,
                errors.EXIT_SIGTERM]
    assert statuses == [0, 1, 2, 3, 4, 5, 6, 130, 143]
    assert sorted(errors.EXIT_STATUSES) == statuses
    for status in statuses:  # the module docstring documents each one
        assert f"\n    {status:<8}{errors.EXIT_STATUSES[status][0]}" in errors.__doc__
    assert (resilience.EXIT_DIVERGED, resilience.EXIT_COLLAPSED, resilience.EXIT_SIGINT, resilience.EXIT_SIGTERM) == (
        3, 6, 130, 143
    )
    assert flagging.errors is errors and flagging.EXIT_BAD_INPUT == 2  # the same module, so the same classes
    assert flagging.RUN_FOLDER_MARKER == run_folder.MARKER


def test_errors_and_flagging_import_no_tensorflow():
    code = (
        "import sys; from experiments import flagging; from supcon_tf.errors import BadInputFile; "
        "assert flagging.errors.BadInputFile is BadInputFile; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'loaded'; print('ok')"
    )
    result = run_python("-c", code, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_describe_os_error_names_what_the_path_and_the_errno():
    describe = errors.describe_os_error
    assert describe(OSError(errno.ENOSPC, "No space left on device", "/x/model.keras")) == (
        "cannot write /x/model.keras: No space left on device [ENOSPC]"
    )
    assert describe(PermissionError(errno.EACCES, "Permission denied", "/x/y")) == (
        "cannot access /x/y: Permission denied [EACCES]"
    )
    assert describe(OSError(errno.EROFS, "Read-only file system", "/ro/a")).endswith("[EROFS]")
    assert describe(OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b")) == (
        "cannot move /a to /b: Invalid cross-device link [EXDEV]"
    )
    assert describe(OSError(errno.EIO, "Input/output error")) == "Input/output error [EIO]"
    assert describe(OSError("a message\n on two lines")) == "a message on two lines"


@pytest.mark.parametrize(
    "error, status",
    [
        (ValueError("bad"), 2),
        (FileNotFoundError("`pretrained` does not exist: /x"), 2),
        (FileExistsError(errno.EEXIST, "File exists", "/x"), 2),
        (errors.RunFolderLocked("in use", path="/r"), 2),
        (OSError(errno.ENOSPC, "No space left on device", "/x"), 4),
        (PermissionError(errno.EACCES, "Permission denied", "/x"), 4),
        (OSError(errno.EIO, "Input/output error", "/x"), 4),
        (BadInputFile("truncated", path="/x"), 5),
        (RuntimeError("a bug"), 1),
        (KeyError("k"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_classify_gives_each_kind_its_status(error, status):
    assert errors.classify(error).status == status
    assert errors.classify(error).internal == (status == 1)


def test_classify_the_stopping_exceptions_of_training():
    diverged = resilience.Diverged(1, 2, float("nan"), 0.1, "not finite")
    assert errors.classify(diverged).status == 3
    interrupted = errors.classify(resilience.Interrupted(15, 0, 3))
    assert (interrupted.status, interrupted.plain) == (143, True)
    assert interrupted.line == "interrupted at epoch 1 step 3; run the same command to resume"


def test_tensorflow_errors_storage_is_4_and_a_graph_error_shows_its_cause():
    import tensorflow as tf

    full = tf.errors.ResourceExhaustedError(None, None, "/run/logs/events.out.tfevents; No space left on device")
    outcome = errors.classify(full)
    assert outcome.status == 4 and outcome.line.endswith("No space left on device [ENOSPC]"), outcome
    assert "/run/logs/events" in outcome.line
    assert errors.classify(tf.errors.UnknownError(None, None, "x: Read-only file system")).status == 4
    assert errors.classify(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")).status == 4

    @tf.function
    def check(x):
        return tf.debugging.check_numerics(x, "the input holds NaN")

    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        check(tf.constant([np.nan]))
    assert "Graph execution error" in str(raised.value)
    outcome = errors.classify(raised.value)
    assert outcome.status == 1 and outcome.internal
    assert outcome.line.startswith("InvalidArgumentError: the input holds NaN"), outcome.line
    assert "Graph execution" not in outcome.line and "[[" not in outcome.line and "Op:" not in outcome.line


# ---------------------------------------------------------------------------
# absl_main: the line, the status, where the traceback goes.
# ---------------------------------------------------------------------------


def _ours(tmp_path, name="run"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / flagging.RUN_FOLDER_MARKER).write_text("{}")
    return folder


def _raising(error, folder=None):
    def main():
        flagging.set_run_folder(folder)
        raise error

    return flagging.absl_main(main)


def test_an_internal_error_is_one_line_and_its_traceback_is_appended_to_error_log(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["/venv/bin/supcon-pretrain", "--model_dir=x"])
    folder = _ours(tmp_path)
    assert _raising(RuntimeError("boom\n here"), folder)(["prog"]) == 1
    log = folder / errors.ERROR_LOG
    assert capsys.readouterr().err == (
        f"supcon-pretrain: internal error: RuntimeError: boom here (traceback in {log})\n"
    )
    assert _raising(OSError(errno.ENOSPC, "No space left on device", str(folder / "model.keras")), folder)(["p"]) == 4
    assert capsys.readouterr().err == (
        f"supcon-pretrain: error: cannot write {folder / 'model.keras'}: No space left on device [ENOSPC] "
        f"(traceback in {log})\n"
    )
    blocks = log.read_text().split("==== ")[1:]
    assert len(blocks) == 2  # appended, one block per error
    assert "exit status 1" in blocks[0] and "argv: /venv/bin/supcon-pretrain --model_dir=x" in blocks[0]
    assert "Traceback (most recent call last)" in blocks[0] and "RuntimeError: boom" in blocks[0]
    assert "exit status 4" in blocks[1] and "OSError: [Errno 28]" in blocks[1]


def test_bad_input_is_one_line_its_traceback_only_in_error_log(tmp_path, capsys):
    folder = _ours(tmp_path)
    assert _raising(BadInputFile("`pretrained` /x is truncated", path="/x"), folder)(["prog"]) == 5
    assert _raising(ValueError("`x` must be positive"), None)(["prog"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].endswith("error: `pretrained` /x is truncated")
    assert err.splitlines()[1].endswith("error: `x` must be positive") and len(err.splitlines()) == 2
    assert "BadInputFile" in (folder / errors.ERROR_LOG).read_text()


def test_a_folder_the_project_did_not_create_gets_no_error_log_the_traceback_goes_to_stderr(tmp_path, capsys):
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    assert _raising(RuntimeError("boom"), foreign)(["prog"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].endswith("internal error: RuntimeError: boom (traceback below)")
    assert "Traceback (most recent call last)" in err and err.rstrip().endswith("RuntimeError: boom")
    assert os.listdir(foreign) == []
    assert _raising(RuntimeError("absent"), tmp_path / "absent")(["prog"]) == 1
    assert "Traceback" in capsys.readouterr().err and not os.path.exists(tmp_path / "absent")


def test_when_error_log_cannot_be_written_the_traceback_goes_to_stderr(tmp_path, capsys):
    folder = _ours(tmp_path)
    (folder / errors.ERROR_LOG).mkdir()  # the append fails (as on the full disk that caused the error)
    assert _raising(OSError(errno.ENOSPC, "No space left on device", "/r/x"), folder)(["prog"]) == 4
    err = capsys.readouterr().err
    assert err.splitlines()[0].endswith("cannot write /r/x: No space left on device [ENOSPC] (traceback below)")
    assert "Traceback (most recent call last)" in err


def test_verbosity_puts_the_traceback_on_stderr_too(tmp_path, capsys, monkeypatch):
    folder = _ours(tmp_path)
    monkeypatch.setattr(flagging.FLAGS["verbosity"], "value", 1)
    assert _raising(ValueError("`x` must be positive"), folder)(["prog"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].endswith("error: `x` must be positive")
    assert "Traceback (most recent call last)" in err and "Traceback" in (folder / errors.ERROR_LOG).read_text()


def test_signals_stay_plain_lines_without_error_log(tmp_path, capsys):
    folder = _ours(tmp_path)
    assert _raising(resilience.Interrupted(2, 1, 3), folder)(["prog"]) == 130
    assert _raising(KeyboardInterrupt(), folder)(["prog"]) == 130
    assert capsys.readouterr().err.splitlines() == [
        "interrupted at epoch 2 step 3; run the same command to resume",
        "interrupted outside a training step; nothing new to resume from",
    ]
    assert not (folder / errors.ERROR_LOG).exists()


# ---------------------------------------------------------------------------
# The disk-full and internal-error fault points.
# ---------------------------------------------------------------------------


def test_fault_modes_parse_and_raise_at_the_requested_write():
    injector = FaultInjector("disk_full:checkpoint_write:2")
    assert (injector.mode, injector.point, injector.count) == ("disk_full", "checkpoint_write", 2)
    injector.reached("checkpoint_write", "/r/a.keras")  # the first: nothing
    with pytest.raises(OSError) as raised:
        injector.reached("checkpoint_write", "/r/a.keras")
    assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, "/r/a.keras")
    with pytest.raises(RuntimeError, match="injected internal error at metrics_write"):
        FaultInjector("internal_error:metrics_write").reached("metrics_write")
    for bad in ("disk_full:step:3", "disk_full:nowhere", "disk_full", "enospc:csv_append"):
        with pytest.raises(ValueError, match="a fault spec must be"):
            FaultInjector(bad)


def test_disk_full_in_atomic_path_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"old": 1}')
    with _faults.installed(FaultInjector("disk_full:metrics_write")), pytest.raises(OSError) as raised:
        checkpointing.write_json_atomically(path, {"new": 2})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert errors.classify(raised.value).line == f"cannot write {path}: No space left on device [ENOSPC]"
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["metrics.json"]


# ---------------------------------------------------------------------------
# The pretrained-model loader.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A saved encoder (8x8x1 digits), and the bad files made from it."""
    folder = tmp_path_factory.mktemp("pretrained")
    encoder = build_encoder("small_cnn", (8, 8, 1), width=0.25)
    good = folder / "run" / "model.keras"
    good.parent.mkdir()
    encoder.save(good)
    data = good.read_bytes()
    (folder / "truncated.keras").write_bytes(data[: len(data) // 2])
    (folder / "text.keras").write_text("not a model\n")
    (folder / "empty.keras").write_bytes(b"")
    corrupt = bytearray(data)
    middle = len(corrupt) // 2
    corrupt[middle:middle + 4] = bytes(b ^ 0xFF for b in corrupt[middle:middle + 4])
    (folder / "corrupt.keras").write_bytes(bytes(corrupt))
    with zipfile.ZipFile(folder / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "a zip, not a model")
    encoder.save_weights(folder / "encoder.weights.h5")
    (folder / "empty_run").mkdir()
    weights = encoder.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[0] = np.nan
    weights[-1] = np.full_like(weights[-1], np.inf)
    encoder.set_weights(weights)
    nan_run = folder / "diverged"
    nan_run.mkdir()
    encoder.save(nan_run / "model.keras")
    return folder


def test_the_loader_returns_the_encoder_of_a_good_file(model_files):
    encoder = load_pretrained_encoder(model_files / "run" / "model.keras", (8, 8, 1))
    assert encoder.name == "small_cnn" and tuple(encoder.inputs[0].shape[1:]) == (8, 8, 1)
    with pytest.raises(ValueError, match=r"give images \(16, 16, 3\).*takes \(8, 8, 1\)") as raised:
        load_pretrained_encoder(model_files / "run" / "model.keras", (16, 16, 3))
    assert not isinstance(raised.value, BadInputFile)  # a flag mismatch: status 2


@pytest.mark.parametrize(
    "name, cause",
    [
        ("truncated.keras", "a zip archive without its end"),
        ("text.keras", "not a zip archive (e.g. a text file)"),
        ("empty.keras", "is empty (0 bytes)"),
        ("corrupt.keras", "is a corrupt Keras model file"),
        ("other.keras", "not a Keras model file: it has no config.json, model.weights.h5"),
        ("encoder.weights.h5", "an HDF5 file"),
    ],
)
def test_the_loader_refuses_a_bad_file_naming_it_and_the_cause(model_files, name, cause):
    path = model_files / name
    with pytest.raises(BadInputFile) as raised:
        load_pretrained_encoder(path, (8, 8, 1))
    message = str(raised.value)
    assert cause in message and str(path) in message and raised.value.path == str(path), message
    assert "not found" not in message.lower()
    assert errors.classify(raised.value).status == 5


def test_the_loader_refuses_a_folder_with_a_hint(model_files):
    with pytest.raises(BadInputFile, match=r"is a folder, not a model file: did you mean .*run/model\.keras\?"):
        load_pretrained_encoder(model_files / "run")
    with pytest.raises(BadInputFile, match=r"is a folder.*RUN/model\.keras"):
        load_pretrained_encoder(model_files / "empty_run")


def test_the_loader_refuses_non_finite_weights(model_files):
    path = model_files / "diverged" / "model.keras"
    with pytest.raises(BadInputFile) as raised:
        load_pretrained_encoder(path, (8, 8, 1))
    assert str(raised.value).startswith(
        f"the pretrained encoder in {path} has non-finite weights (2 of "
    )
    assert (
        "tensors): it came from a diverged run; use an earlier checkpoint, e.g. "
        f"{model_files / 'diverged' / 'checkpoints' / 'latest.keras'}, or retrain"
    ) in str(raised.value)


def test_the_loader_says_a_missing_file_is_missing(model_files):
    with pytest.raises(FileNotFoundError, match=r"`pretrained` does not exist: .*nowhere\.keras"):
        load_pretrained_encoder(model_files / "nowhere.keras")
    with pytest.raises(ValueError, match="`pretrained` must be the path"):
        load_pretrained_encoder(None)


# ---------------------------------------------------------------------------
# End to end, through the binaries.
# ---------------------------------------------------------------------------


@pytest.mark.slow  # two training runs of the binary: 7-14 s
def test_disk_full_mid_run_is_one_line_exit_4_traceback_in_error_log_and_the_rerun_resumes(tmp_path):
    model_dir = tmp_path / "run"
    full = _run("pretrain", f"--model_dir={model_dir}", *TINY, fault="disk_full:checkpoint_write")
    assert full.returncode == 4, full.stderr[-3000:]
    checkpoint = model_dir / "checkpoints" / "latest.keras"
    log = model_dir / errors.ERROR_LOG
    assert _one_error_line(full).endswith(
        f"error: cannot write {checkpoint}: No space left on device [ENOSPC] (traceback in {log})"
    )
    assert "Traceback" not in full.stderr
    text = log.read_text()
    assert "exit status 4" in text and "Traceback (most recent call last)" in text and "[Errno 28]" in text
    assert not checkpoint.exists() and not [n for n in os.listdir(checkpoint.parent) if n.startswith(".tmp-")]

    resumed = _run("pretrain", f"--model_dir={model_dir}", *TINY)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((model_dir / "run_state.json").read_text())
    assert [r["global_step"] for r in state["resumes"]] == [1]  # the backup of step 1, before the failed write
    assert json.loads((model_dir / "metrics.json").read_text())["restarts"] == 1
    assert (model_dir / "FINISHED").exists() and checkpoint.exists()


@pytest.mark.slow  # two training runs of the binary: 7-14 s
def test_an_internal_error_is_exit_1_with_its_traceback_in_error_log_or_on_stderr_with_v(tmp_path):
    model_dir = tmp_path / "run"
    log = model_dir / errors.ERROR_LOG
    bug = _run("pretrain", f"--model_dir={model_dir}", *TINY, fault="internal_error:metrics_write")
    assert bug.returncode == 1, bug.stderr[-3000:]
    assert _one_error_line(bug).endswith(
        "internal error: RuntimeError: injected internal error at metrics_write (tests/fault_injection.py) "
        f"(traceback in {log})"
    )
    assert "Traceback" not in bug.stderr and "RuntimeError: injected" in log.read_text()

    verbose = _run("pretrain", f"--model_dir={model_dir}", *TINY, "-v", "1", fault="internal_error:metrics_write")
    assert verbose.returncode == 1, verbose.stderr[-3000:]
    assert "Traceback (most recent call last)" in verbose.stderr and "in reached" in verbose.stderr
    assert len(_error_lines(verbose.stderr)) == 1
    assert log.read_text().count("==== ") == 2


def test_a_storage_error_without_a_run_folder_prints_its_traceback_after_the_line(tmp_path, model_files):
    output = tmp_path / "exported"
    result = _run(
        "export_model", f"--model={model_files / 'run' / 'model.keras'}", f"--output={output}",
        fault="disk_full:saved_model_export",
    )
    assert result.returncode == 4, result.stderr[-3000:]
    line = _one_error_line(result)
    assert line.endswith(f"error: cannot write {output}: No space left on device [ENOSPC] (traceback below)")
    assert result.stderr.index(line) < result.stderr.index("Traceback (most recent call last)")
    assert not output.exists()


# These run the binary's --pretrained through supcon_tf.runner, which must call
# supcon_tf.encoders.load_pretrained_encoder.
@pytest.mark.parametrize(
    "name, expected",
    [
        ("truncated.keras", "a zip archive without its end"),
        ("text.keras", "not a zip archive"),
        ("run", "is a folder, not a model file: did you mean {files}/run/model.keras?"),
        ("diverged/model.keras", "has non-finite weights"),
    ],
)
def test_linear_eval_refuses_a_bad_pretrained_file_with_one_line_and_exit_5(tmp_path, model_files, name, expected):
    result = _run(
        "linear_eval", "--preset=digits_linear", f"--pretrained={model_files / name}",
        f"--model_dir={tmp_path / 'linear'}", "--epochs=1", "--verbose=0",
    )
    assert result.returncode == 5, (result.returncode, result.stderr[-3000:])
    line = _one_error_line(result)
    assert expected.format(files=model_files) in line and str(model_files / name) in line, line
    assert "not found" not in result.stderr.lower() and "Traceback" not in result.stderr
    assert not (tmp_path / "linear" / "training_log.csv").exists()  # no training started
