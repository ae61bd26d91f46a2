"""Shared test helpers: the repository's ROOT; serialisation round trips for layers and models; running binaries
in subprocesses (`run_python`, `start_python`, `run_command`, `start_command`, all in `subprocess_env`, with a
tests/fault_injection.py fault on request); `session_folder`, where the pytest-xdist workers make a shared run
once."""

import contextlib
import copy
import fcntl
import os
import subprocess
import sys
import tempfile

import keras
import numpy as np


def _to_numpy_tree(x):
    if isinstance(x, dict):
        return {k: _to_numpy_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_numpy_tree(v) for v in x]
    return keras.ops.convert_to_numpy(x)


def _assert_trees_close(a, b, atol):
    if isinstance(a, dict):
        assert set(a) == set(b), (set(a), set(b))
        for k in a:
            _assert_trees_close(a[k], b[k], atol)
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_trees_close(x, y, atol)
    else:
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)


def assert_serialization_roundtrip(obj, inputs, atol=1e-6):
    """Checks get_config/from_config and a `.keras` save/load of a layer or model.

    `obj` must already be built (called once). The from_config copy gets the
    original's weights and must give identical outputs; the `.keras` copy must
    give identical outputs with the weights it loaded.
    """
    expected = _to_numpy_tree(obj(inputs, training=False))

    config = obj.get_config()
    # Deep copy: some from_config implementations (e.g. keras' Functional)
    # pop keys from the dict they are given, which would make the equality
    # check below compare against a gutted config.
    clone = obj.__class__.from_config(copy.deepcopy(config))
    clone(inputs, training=False)  # build
    clone.set_weights(obj.get_weights())
    _assert_trees_close(_to_numpy_tree(clone(inputs, training=False)), expected, atol)
    assert clone.get_config() == config

    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(obj, keras.Model):
            path = os.path.join(tmp, "model.keras")
            obj.save(path)
            loaded = keras.saving.load_model(path)
        else:
            wrapper_in = keras.Input(shape=keras.ops.shape(inputs)[1:], batch_size=None)
            wrapper = keras.Model(wrapper_in, obj(wrapper_in))
            path = os.path.join(tmp, "layer.keras")
            wrapper.save(path)
            loaded = keras.saving.load_model(path)
        _assert_trees_close(_to_numpy_tree(loaded(inputs, training=False)), expected, atol)
    return clone


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAULT_INJECTION = os.path.join(ROOT, "tests", "fault_injection.py")


def subprocess_env(*, extra_path=(), **variables):
    """The environment for a binary run by a test: quiet TensorFlow, the repository importable, single-process.

    `extra_path`: folders importable after the repository (PYTHONPATH); `variables`: further variables set.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join((ROOT, *extra_path)))
    env.pop("TF_CONFIG", None)
    env.update(variables)
    return env


def _subprocess_options(command, fault, env, cwd, kwargs):
    """`(command, Popen keyword arguments)`; with `fault`, the command runs under tests/fault_injection.py's hook."""
    if fault:
        if command[0] != sys.executable or command[1] != "-m":
            raise ValueError(f"`fault` needs a command `python -m MODULE ...`, received: command={command!r}")
        command = [sys.executable, FAULT_INJECTION, fault, *command[1:]]
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return command, dict(kwargs, cwd=cwd, env=subprocess_env() if env is None else env)


def run_command(command, *, fault=None, env=None, cwd=ROOT, timeout=300, **kwargs):
    """`subprocess.run(command)` the way every test runs a binary: from the repository root, in
    `subprocess_env()` (or `env`), stdout and stderr captured as text, bounded by `timeout` seconds.

    `fault`: a tests/fault_injection.py spec (e.g. "backup_write:3"): the command (`python -m MODULE ...`) runs
    with that fault injected. `kwargs` go to `subprocess.run` (e.g. `stdout=`, `stderr=subprocess.STDOUT`).
    """
    command, options = _subprocess_options(command, fault, env, cwd, kwargs)
    return subprocess.run(command, timeout=timeout, **options)


def start_command(command, *, fault=None, env=None, cwd=ROOT, **kwargs):
    """`subprocess.Popen(command)` in the same environment as `run_command`; the caller waits for it."""
    command, options = _subprocess_options(command, fault, env, cwd, kwargs)
    return subprocess.Popen(command, **options)


def run_python(*args, **kwargs):
    """`run_command` of this interpreter: `run_python("-m", "experiments.pretrain", ...)`."""
    return run_command([sys.executable, *args], **kwargs)


def start_python(*args, **kwargs):
    """`start_command` of this interpreter."""
    return start_command([sys.executable, *args], **kwargs)


@contextlib.contextmanager
def session_folder(tmp_path_factory, name):
    """`<the test session's temporary folder>/<name>`, created, held under an exclusive lock for the `with` block.

    For a run that several tests read, made once per test session: the pytest-xdist workers share the session's
    folder (each worker's own lies in it), so the first to enter makes the run inside the block, and the others
    wait for the lock and then find it there. (`xdist_group` keeps marked tests on one worker under
    `--dist loadgroup`; this lock serves every other way of running them.) The caller checks in the block whether the run
    is complete, so a run that a failed holder left unfinished is made (or resumed) by the next one.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / name
    folder.mkdir(exist_ok=True)
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield folder


def run_binary_in_process(module, *flags):
    """Runs `python -m experiments.<module> *flags` in this process; a `subprocess.CompletedProcess` like
    `run_python`'s (returncode: the exit status; stdout, stderr: what Python wrote to them).

    The binary's own entry runs (`entry()`: its flags, `config_from_flags`, `runner.run`, `flagging.absl_main`'s
    one error line and exit status) with absl's flag parser, `flagging.parse_flags`; only absl's once-per-process
    set-up of `app.run` (its logging handler, faulthandler) is left out, as it would stay for the rest of the
    test session. The flags are unparsed before and after, and TensorFlow's op determinism (`--deterministic`)
    is put back as it was. A binary that defines its flags in `entry()` (the demo, the report, the export, ...)
    sees only its own, as in its own process: the flags that other project modules defined are set aside for the
    run (`_own_flags_only`); one that also takes the training flags (the sweep imports experiments.common in
    `entry()`) gets them from a fresh import of experiments.common, as its own process would.
    """
    import importlib
    import io

    # TensorFlow exports enable_op_determinism only; its state and its inverse are in the private module.
    from tensorflow.python.framework import config as tf_config

    from experiments import common, flagging

    binary = importlib.import_module(f"experiments.{module}")
    if hasattr(binary, "__path__"):  # a package: `python -m` runs its __main__
        binary = importlib.import_module(f"experiments.{module}.__main__")
    argv = [binary.__file__, *flags]  # sys.argv of `python -m experiments.<module>`

    def run_binary(main_fn):  # flagging.run_binary without absl.app's process set-up
        sys.exit(flagging.absl_main(main_fn)(flagging.parse_flags(sys.argv)))

    # The training binaries' entry is common.stage_entry's, on the flags experiments.common defines at import.
    defines_its_flags = binary.entry.__module__ != common.__name__
    determinism = tf_config.is_op_determinism_enabled()
    saved = sys.argv, common.run_binary, flagging.run_binary
    stdout, stderr = io.StringIO(), io.StringIO()
    flagging.FLAGS.unparse_flags()
    sys.argv, common.run_binary, flagging.run_binary = argv, run_binary, run_binary
    try:
        with _own_flags_only(flagging.FLAGS) if defines_its_flags else contextlib.nullcontext():
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    binary.entry()
                    status = 0
                except SystemExit as exit_:
                    status = exit_.code
    finally:
        sys.argv, common.run_binary, flagging.run_binary = saved
        flagging.FLAGS.unparse_flags()
        if not determinism:
            tf_config.disable_op_determinism()
    return subprocess.CompletedProcess(argv, status, stdout.getvalue(), stderr.getvalue())


@contextlib.contextmanager
def _own_flags_only(flag_values):
    """Sets aside the flags of the project's modules (`experiments.*`) for a binary that defines its own in
    `entry()`; afterwards removes the flags the run defined and puts the set-aside ones back, with the record of
    which module defined which flag (absl's help lists flags by module)."""
    records = (
        flag_values.flags_by_module_dict(), flag_values.flags_by_module_id_dict(), flag_values.key_flags_by_module_dict()
    )
    saved_records = [{key: list(value) for key, value in record.items()} for record in records]
    saved = {name: flag_values[name] for name in flag_values}
    project = {
        id(flag) for name, defined in records[0].items() if name.split(".")[0] == "experiments" for flag in defined
    }
    for name, flag in saved.items():
        if id(flag) in project:
            delattr(flag_values, name)
    # experiments.common defines the training flags when imported: a binary that imports it in entry() (the sweep)
    # gets a fresh import, which defines them again; the module in use everywhere else is put back after.
    import experiments

    common = sys.modules.pop("experiments.common", None)
    package_common = experiments.__dict__.pop("common", None)
    try:
        yield
    finally:
        sys.modules.pop("experiments.common", None)
        experiments.__dict__.pop("common", None)
        if common is not None:
            sys.modules["experiments.common"] = common
        if package_common is not None:
            experiments.common = package_common
        for name in list(flag_values):
            if saved.get(name) is not flag_values[name]:
                delattr(flag_values, name)
        for name, flag in saved.items():
            if name not in flag_values:
                flag_values[name] = flag
        for record, saved_record in zip(records, saved_records):
            record.clear()
            record.update(saved_record)


def image_folder(root, classes, per_class=3):
    """Writes `<root>/{train,test}/<class>/<i>.png` (8x8 RGB), `classes[name]` images per class (None:
    `per_class`); returns `root` as a string."""
    for split in ("train", "test"):
        for name, count in classes.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(count if count is not None else per_class):
                pixels = np.full((8, 8, 3), 30 * i, np.uint8)
                keras.utils.save_img(os.path.join(root, split, name, f"{i}.png"), pixels)
    return str(root)


def assert_refused(result, model_dir, expected):
    """A binary's up-front refusal: exit status 2, `expected` in the last stderr line, no traceback, nothing
    written in `model_dir`."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert expected in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(model_dir) or not os.listdir(model_dir)


def with_loss_config(kwargs):
    """`kwargs` for `SupConModel` with any loss options (temperature=..., ...) gathered into `loss_config`."""
    import dataclasses

    from supcon_tf.losses import LossConfig

    names = {field.name for field in dataclasses.fields(LossConfig)}
    options = {name: kwargs[name] for name in kwargs if name in names}
    rest = {name: value for name, value in kwargs.items() if name not in names}
    return dict(rest, loss_config=LossConfig(**options)) if options else rest
