"""Multi-process MultiWorkerMirroredStrategy: equality with one process, and resume after a worker is killed.

Every process runs tests/multiworker_job.py on 127.0.0.1 ports. These tests
take tens of seconds each: they are marked slow and run with
`make test-slow` (or `make test-all`).
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import ROOT, start_command, start_python, subprocess_env

JOB = os.path.join(ROOT, "tests", "multiworker_job.py")

pytestmark = pytest.mark.slow


def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _launch(model_dir, *extra, index=None, ports=None):
    command = [sys.executable, JOB, f"--model_dir={model_dir}", *extra]
    if ports is not None:
        command += [f"--index={index}", "--ports=" + ",".join(map(str, ports))]
    log = open(os.path.join(str(model_dir), f"stdout_{index if index is not None else 'single'}.log"), "a")
    return start_command(command, stdout=log, stderr=subprocess.STDOUT)


def _launch_cluster(model_dir, *extra):
    os.makedirs(model_dir, exist_ok=True)
    ports = _free_ports(2)
    return [_launch(model_dir, *extra, index=i, ports=ports) for i in range(2)]


def _wait(processes, timeout=240):
    deadline = time.time() + timeout
    for process in processes:
        process.wait(timeout=max(1, deadline - time.time()))
    return [p.returncode for p in processes]


def _weights(path):
    data = np.load(path)
    return [data[f"arr_{i}"] for i in range(len(data.files))]


def _events(model_dir, task="worker_1"):
    with open(os.path.join(model_dir, f"events_{task}.log")) as f:
        return f.read().splitlines()


def _assert_outputs_complete(model_dir, exported=True):
    import keras
    import tensorflow as tf

    import supcon_tf  # noqa: F401  (registers the classes the checkpoint names)

    leftovers = glob.glob(os.path.join(model_dir, "**", ".tmp-*"), recursive=True)
    leftovers += glob.glob(os.path.join(model_dir, "**", ".old-*"), recursive=True)
    assert not leftovers, f"partial outputs left behind: {leftovers}"
    model = keras.saving.load_model(os.path.join(model_dir, "ckpt", "latest.keras"))
    assert model.optimizer is not None  # compiled on load, optimizer state restored
    if not exported:
        return
    images = np.random.default_rng(0).random((3, 8, 8, 1)).astype(np.float32)
    reloaded = tf.saved_model.load(os.path.join(model_dir, "export", "encoder"))
    np.testing.assert_allclose(
        reloaded.serve(images).numpy(), model.encoder(images, training=False).numpy(), atol=1e-5
    )


def test_two_workers_match_one_process(tmp_path):
    import multiworker_job

    args = ("--epochs=2", "--steps_per_epoch=3")
    workers = _launch_cluster(tmp_path / "cluster", *args)
    # The one process is this one (it needs no process of its own), training while the cluster does.
    assert multiworker_job.main([f"--model_dir={tmp_path / 'single'}", *args]) == 0
    assert _wait(workers) == [0, 0], open(tmp_path / "cluster" / "stdout_0.log").read()[-3000:]
    w0 = _weights(tmp_path / "cluster" / "weights_worker_0.npz")
    w1 = _weights(tmp_path / "cluster" / "weights_worker_1.npz")
    ws = _weights(tmp_path / "single" / "weights_worker_0.npz")
    initial = _weights(tmp_path / "single" / "initial_worker_0.npz")
    assert max(np.max(np.abs(a - b)) for a, b in zip(initial, ws)) > 1e-3  # training moved the weights
    assert max(np.max(np.abs(a - b)) for a, b in zip(w0, w1)) == 0.0
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(w0, ws))
    print(f"multi-worker vs one process: max weight difference {difference:.3g}")
    assert difference <= 1e-5
    # The same history, but mean_cosine: each replica measures its own half of the batch (models/supcon.py), so
    # the cluster's is the mean of two local values, not the single process's value over the global batch.
    histories = [json.loads(_events(tmp_path / where, "worker_0")[-1].removeprefix("done ")) for where in ("cluster", "single")]
    cluster, single_history = [{k: v for k, v in h.items() if k != "mean_cosine"} for h in histories]
    assert cluster == single_history and set(histories[0]) == set(histories[1])
    _assert_outputs_complete(tmp_path / "cluster")
    # Only the chief wrote the checkpoint and the export.
    assert sorted(os.listdir(tmp_path / "cluster" / "backup")) == ["worker_0", "worker_1"]


def test_killed_worker_resumes_from_backup(tmp_path):
    model_dir = tmp_path / "run"
    args = ("--epochs=6", "--steps_per_epoch=4", "--sleep_per_step=0.3")
    workers = _launch_cluster(model_dir, *args)
    deadline = time.time() + 240
    while time.time() < deadline:
        if os.path.exists(model_dir / "events_worker_1.log") and "epoch_begin 3" in _events(model_dir):
            break
        assert all(w.poll() is None for w in workers), "a worker exited before the kill"
        time.sleep(0.2)
    else:
        pytest.fail("training never reached epoch 3")
    time.sleep(0.5)  # mid-epoch
    workers[1].send_signal(signal.SIGKILL)
    workers[1].wait()
    time.sleep(2)
    workers[0].kill()  # the survivor is stuck in a collective with a dead peer
    workers[0].wait()
    assert not any(line.startswith("done") for line in _events(model_dir))
    assert not os.path.exists(model_dir / "export")  # the killed run never got to export
    _assert_outputs_complete(model_dir, exported=False)  # its checkpoint is whole

    relaunched = _launch_cluster(model_dir, *args)
    assert _wait(relaunched) == [0, 0], open(model_dir / "stdout_0.log").read()[-3000:]
    events = _events(model_dir)
    second_run = events[len(events) - 1 - events[::-1].index("start") :]
    resumed_at = int(second_run[1].split()[1])
    print(f"resumed at epoch {resumed_at} (0-based) after a SIGKILL during epoch 3")
    assert resumed_at == 3
    assert second_run[-2] == "epoch_begin 5" and second_run[-1].startswith("done")
    _assert_outputs_complete(model_dir)


# The real binary under MultiWorkerMirroredStrategy, killed mid-epoch and restarted (issue: runs that survive any crash).
BINARY_FLAGS = [
    "--preset=digits_supcon", "--strategy=multi_worker", "--epochs=2", "--steps_per_epoch=4", "--batch_size=32",
    "--encoder_width=0.25", "--backup_every_steps=2", "--deterministic", "--verbose=0", "--export=false",
]


def _launch_binary_cluster(model_dir, ports, faults=(None, None)):
    processes = []
    for index in range(2):
        tf_config = json.dumps(
            {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}}
        )
        log = open(os.path.join(str(model_dir) + f".worker{index}.log"), "a")
        processes.append(
            start_python(
                "-m", "experiments.pretrain", f"--model_dir={model_dir}", *BINARY_FLAGS,
                fault=faults[index], env=subprocess_env(TF_CONFIG=tf_config), stdout=log, stderr=subprocess.STDOUT,
            )
        )
    return processes


# The uninterrupted binary cluster on BINARY_FLAGS, trained once per test process: the killed cluster below and
# tests/test_cluster.py's Slurm cluster both compare against it. Their tests share an xdist_group, which keeps
# them on one worker under `--dist loadgroup` (`make test-slow`); run otherwise, each process trains its own.
_UNINTERRUPTED = {}


def start_uninterrupted_binary_cluster(tmp_path_factory):
    """Starts the uninterrupted cluster unless this process has one; returns `wait`, which waits for it (asserting
    that both workers finished) and returns its model_dir."""
    if not _UNINTERRUPTED:
        model_dir = tmp_path_factory.mktemp("binary_cluster") / "reference"
        _UNINTERRUPTED.update(model_dir=model_dir, processes=_launch_binary_cluster(model_dir, _free_ports(2)))

    def wait():
        model_dir = _UNINTERRUPTED["model_dir"]
        assert _wait(_UNINTERRUPTED["processes"]) == [0, 0], open(str(model_dir) + ".worker0.log").read()[-3000:]
        return model_dir

    return wait


def _model_weights(model_dir):
    import keras

    import supcon_tf  # noqa: F401

    return keras.saving.load_model(os.path.join(model_dir, "model.keras"), compile=False).get_weights()


@pytest.mark.xdist_group("binary_cluster")
def test_binary_cluster_killed_mid_epoch_resumes_like_an_uninterrupted_one(tmp_path, tmp_path_factory):
    reference = start_uninterrupted_binary_cluster(tmp_path_factory)()

    model_dir = tmp_path / "run"
    workers = _launch_binary_cluster(model_dir, _free_ports(2), faults=(None, "step:6"))  # worker 1 dies in epoch 1
    workers[1].wait(timeout=240)
    assert workers[1].returncode == -signal.SIGKILL, open(str(model_dir) + ".worker1.log").read()[-3000:]
    time.sleep(1)
    workers[0].kill()  # the survivor is stuck in a collective with a dead peer
    workers[0].wait()
    assert not os.path.exists(model_dir / "FINISHED")

    assert _wait(_launch_binary_cluster(model_dir, _free_ports(2))) == [0, 0], open(
        str(model_dir) + ".worker0.log"
    ).read()[-3000:]
    with open(model_dir / "run_state.json") as f:
        resumes = json.load(f)["resumes"]
    assert [r["global_step"] for r in resumes] == [6], resumes
    difference = max(
        float(np.max(np.abs(a - b))) for a, b in zip(_model_weights(model_dir), _model_weights(reference))
    )
    print(f"2 workers, worker 1 SIGKILLed before global step 6: resumed at step {resumes[0]['global_step']}, "
          f"max weight difference against the uninterrupted cluster {difference:.3g}")
    assert difference <= 1e-5
    assert os.path.exists(model_dir / "FINISHED") and not os.path.exists(model_dir / "backup")
