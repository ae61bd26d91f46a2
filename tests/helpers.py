"""Shared test helpers: serialisation round trips for layers and models; running binaries in subprocesses
(`run_python`, `start_python`, `run_command`, `start_command`, all in `subprocess_env`)."""

import copy
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


def subprocess_env(fault=None, *, extra_path=(), **variables):
    """The environment for a binary run by a test: quiet TensorFlow, the repository importable, single-process,
    and `SUPCON_TF_FAULT` set to `fault` (or unset).

    `extra_path`: folders importable after the repository (PYTHONPATH); `variables`: further variables set.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=os.pathsep.join((ROOT, *extra_path)))
    env.pop("TF_CONFIG", None)
    env.pop("SUPCON_TF_FAULT", None)
    if fault:
        env["SUPCON_TF_FAULT"] = fault
    env.update(variables)
    return env


def _subprocess_options(fault, env, cwd, kwargs):
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    return dict(kwargs, cwd=cwd, env=subprocess_env(fault) if env is None else env)


def run_command(command, *, fault=None, env=None, cwd=ROOT, timeout=300, **kwargs):
    """`subprocess.run(command)` the way every test runs a binary: from the repository root, in
    `subprocess_env(fault)` (or `env`), stdout and stderr captured as text, bounded by `timeout` seconds.

    `kwargs` go to `subprocess.run` (e.g. `stdout=`, `stderr=subprocess.STDOUT`).
    """
    return subprocess.run(command, timeout=timeout, **_subprocess_options(fault, env, cwd, kwargs))


def start_command(command, *, fault=None, env=None, cwd=ROOT, **kwargs):
    """`subprocess.Popen(command)` in the same environment as `run_command`; the caller waits for it."""
    return subprocess.Popen(command, **_subprocess_options(fault, env, cwd, kwargs))


def run_python(*args, **kwargs):
    """`run_command` of this interpreter: `run_python("-m", "experiments.pretrain", ...)`."""
    return run_command([sys.executable, *args], **kwargs)


def start_python(*args, **kwargs):
    """`start_command` of this interpreter."""
    return start_command([sys.executable, *args], **kwargs)
