"""--cluster: where --strategy multi_worker finds its workers (TF_CONFIG, or a Slurm step through SlurmClusterResolver).

The Slurm tests give this process (or two local processes) the environment a
real `srun` gives each task of a job step; no Slurm runs here. The
multi-process test is slow (tens of seconds) and runs with `make test-slow`.
"""

import json
import os
import socket
import subprocess
import time

import numpy as np
import pytest
from helpers import assert_refused, run_binary_in_process, start_python, subprocess_env
from test_multiworker import BINARY_FLAGS, _free_ports, _model_weights, _wait, start_uninterrupted_binary_cluster
from test_run_lifecycle import TINY

from supcon_tf import config as config_module
from supcon_tf import distribute
from supcon_tf.config import RunConfig

SLURM_VARIABLES = distribute.SLURM_STEP_VARIABLES


def _without_tf_config(monkeypatch):
    """TF_CONFIG unset now, and unset again after the test (resolve_cluster('slurm') sets it)."""
    monkeypatch.setenv("TF_CONFIG", "")  # recorded, so that monkeypatch's undo removes what the test set
    monkeypatch.delenv("TF_CONFIG")


def _slurm_step(monkeypatch, procid, num_tasks, nodelist, tasks_per_node):
    """This process as task `procid` of a Slurm job step, as srun would start it (and no TF_CONFIG)."""
    _without_tf_config(monkeypatch)
    for name, value in zip(SLURM_VARIABLES, (procid, num_tasks, nodelist, tasks_per_node)):
        monkeypatch.setenv(name, str(value))


def _no_slurm(monkeypatch):
    _without_tf_config(monkeypatch)
    for name in (*SLURM_VARIABLES, "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)


def test_cluster_choices_are_the_librarys():
    assert config_module.CLUSTERS == distribute.CLUSTERS


@pytest.mark.parametrize(
    "procid, nodelist, tasks_per_node, hosts, per_node",
    [
        (1, "localhost", "2", ["localhost"], 2),  # two tasks on this machine
        (3, "gpu[07-08]", "2(x2)", ["gpu07", "gpu08"], 2),  # 2 nodes x 2 tasks
        (1, "b1,a1", "1(x2)", ["a1", "b1"], 1),  # the resolver orders the nodes by name
    ],
)
def test_slurm_step_resolves_to_a_cluster_and_sets_tf_config(monkeypatch, capsys, procid, nodelist, tasks_per_node,
                                                             hosts, per_node):
    num_tasks = len(hosts) * per_node
    _slurm_step(monkeypatch, procid, num_tasks, nodelist, tasks_per_node)
    resolver = distribute.resolve_cluster("slurm", port_base=7000)
    # The documented rule: nodes in sorted order, a node's n-th task at port_base + n, the task's index its rank.
    workers = [f"{host}:{7000 + n}" for host in hosts for n in range(per_node)]
    assert resolver.cluster_spec().as_dict() == {"worker": workers}
    assert (resolver.task_type, resolver.task_id) == ("worker", procid)
    assert resolver.num_accelerators() == {"GPU": 0}  # this machine has no GPU
    assert json.loads(os.environ["TF_CONFIG"]) == {"cluster": {"worker": workers}, "task": {"type": "worker",
                                                                                             "index": procid}}
    line = capsys.readouterr().out.strip()
    assert line == (f"Slurm task {procid} is worker {procid} of {num_tasks} at {workers[procid]} (0 GPUs); "
                    f"workers: {', '.join(workers)}")
    # Resolving again in the same process (run, then build_strategy) finds its own TF_CONFIG and accepts it.
    assert distribute.resolve_cluster("slurm", port_base=7000).task_id == procid


def test_the_chief_and_the_backup_folders_follow_the_slurm_rank(monkeypatch, tmp_path):
    from supcon_tf import checkpointing

    for procid in (0, 1):
        _slurm_step(monkeypatch, procid, 2, "localhost", "2")
        distribute.resolve_cluster("slurm")
        assert checkpointing.is_chief() == (procid == 0)
        assert checkpointing.worker_backup_dir(tmp_path) == os.path.join(tmp_path, f"worker_{procid}")


def test_auto_uses_slurm_only_in_a_step_of_two_or_more_tasks(monkeypatch, capsys):
    _slurm_step(monkeypatch, 0, 2, "localhost", "2")
    resolver = distribute.resolve_cluster("auto", port_base=7100)
    assert resolver.cluster_spec().as_dict() == {"worker": ["localhost:7100", "localhost:7101"]}
    assert capsys.readouterr().out.startswith("Slurm step detected (--cluster=auto): Slurm task 0 is worker 0 of 2")

    _slurm_step(monkeypatch, 0, 1, "localhost", "1")  # `srun -n 1 supcon-pretrain ...`: one process, TF_CONFIG's
    with pytest.raises(ValueError, match="needs the TF_CONFIG environment variable"):
        distribute.resolve_cluster("auto")
    tf_config = {"cluster": {"worker": ["127.0.0.1:7200", "127.0.0.1:7201"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(tf_config))
    resolver = distribute.resolve_cluster("auto")
    assert resolver.cluster_spec().as_dict() == tf_config["cluster"] and resolver.task_id == 1
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("missing", SLURM_VARIABLES)
def test_slurm_outside_a_step_is_refused(monkeypatch, missing):
    _slurm_step(monkeypatch, 0, 2, "localhost", "2")
    monkeypatch.delenv(missing)
    with pytest.raises(ValueError, match=f"needs the Slurm step environment .*received: {missing} unset$"):
        distribute.resolve_cluster("slurm")
    assert "TF_CONFIG" not in os.environ


@pytest.mark.parametrize(
    "environment, kwargs, match",
    [
        ((2, 2, "localhost", "2"), {}, "gives no task 2 with a port"),  # rank beyond the step's tasks
        ((0, 3, "localhost", "2"), {}, "Requested 3 tasks but only 2 were assigned"),
        ((0, 2, "n[1-", "1(x2)"), {}, "Invalid hostlist format"),
        ((1, 2, "localhost", "2"), {"port_base": 65535}, "gives no task 1 with a port in \\[1, 65535\\]"),
        ((0, 2, "localhost", "2"), {"gpus_per_task": 1}, "`gpus_per_task` must be at most the 0 GPUs this task sees"),
        ((0, 2, "localhost", "2"), {"port_base": 0}, "`port_base` must be an int in \\[1, 65535\\]"),
        ((0, 2, "localhost", "2"), {"gpus_per_task": -1}, "`gpus_per_task` must be an int >= 0"),
        ((0, 2, "localhost", "2"), {"cluster": "kubernetes"}, "`cluster` must be one of"),
    ],
)
def test_bad_slurm_environments_and_arguments_are_refused(monkeypatch, environment, kwargs, match):
    _slurm_step(monkeypatch, *environment)
    kwargs = {"cluster": "slurm", **kwargs}
    with pytest.raises(ValueError, match=match) as error:
        distribute.resolve_cluster(**kwargs)
    assert "\n" not in str(error.value)
    assert "TF_CONFIG" not in os.environ


def test_slurm_refuses_a_tf_config_naming_another_cluster(monkeypatch):
    _slurm_step(monkeypatch, 0, 2, "localhost", "2")
    other = json.dumps({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}})
    monkeypatch.setenv("TF_CONFIG", other)
    with pytest.raises(ValueError, match="TF_CONFIG names another one: unset TF_CONFIG, or use cluster 'tf_config'"):
        distribute.resolve_cluster("slurm")
    assert os.environ["TF_CONFIG"] == other


def test_get_strategy_takes_a_resolver_for_multi_worker_only(monkeypatch):
    with pytest.raises(ValueError, match="`cluster_resolver` is for name='multi_worker'"):
        distribute.get_strategy("mirrored", cluster_resolver=object())
    with pytest.raises(ValueError, match="`cluster_resolver` must be a tf.distribute.cluster_resolver"):
        distribute.get_strategy("multi_worker", cluster_resolver="localhost:7000")


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"cluster": "slurm"}, "`cluster` 'slurm' says where strategy='multi_worker' finds its workers: add "
                               "--strategy=multi_worker, received: cluster='slurm' with strategy='default'"),
        ({"cluster": "auto", "strategy": "mirrored"}, "received: cluster='auto' with strategy='mirrored'"),
        ({"cluster_port_base": 9000}, "`cluster_port_base` is for cluster='slurm' or 'auto'"),
        ({"cluster_gpus_per_task": 1, "strategy": "multi_worker"}, "`cluster_gpus_per_task` is for cluster='slurm'"),
        ({"cluster": "slurm", "strategy": "multi_worker", "cluster_port_base": 70000},
         "`cluster_port_base` must be an int in [1, 65535], received: cluster_port_base=70000"),
        ({"cluster": "slurm", "strategy": "multi_worker", "cluster_gpus_per_task": -1},
         "`cluster_gpus_per_task` must be an int >= 0"),
        ({"cluster": "slurm", "strategy": "multi_worker", "data_service": "grpc://localhost:5050"},
         "`data_service` is for single-process training"),
        ({"cluster": "lsf", "strategy": "multi_worker"}, "`cluster` must be one of"),
    ],
)
def test_config_refuses_cluster_settings_that_make_no_sense(changes, match):
    with pytest.raises(ValueError, match=match.replace("[", "\\[").replace("]", "\\]")):
        RunConfig.from_flat(**changes)


def test_binary_refuses_cluster_slurm_outside_a_slurm_step(monkeypatch, tmp_path):
    _no_slurm(monkeypatch)
    model_dir = tmp_path / "run"
    result = run_binary_in_process(
        "pretrain", f"--model_dir={model_dir}", *TINY, "--strategy=multi_worker", "--cluster=slurm"
    )
    assert_refused(result, model_dir, "`cluster` 'slurm' needs the Slurm step environment that srun gives each task "
                                      "(start every task with srun), received: SLURM_PROCID, SLURM_STEP_NUM_TASKS, "
                                      "SLURM_STEP_NODELIST, SLURM_STEP_TASKS_PER_NODE unset")
    assert not os.path.exists(model_dir)


def test_binary_refuses_cluster_slurm_without_multi_worker(monkeypatch, tmp_path):
    _slurm_step(monkeypatch, 0, 2, "localhost", "2")
    model_dir = tmp_path / "run"
    result = run_binary_in_process("pretrain", f"--model_dir={model_dir}", *TINY, "--cluster=slurm")
    assert_refused(result, model_dir, "add --strategy=multi_worker, received: cluster='slurm' with strategy='default'")
    assert "TF_CONFIG" not in os.environ


def test_no_test_leaves_tf_config_behind():
    assert "TF_CONFIG" not in os.environ  # after the tests above (pytest keeps the file's order)


def _consecutive_free_ports():
    """A port P with P + 1 free too, on 127.0.0.1 (a Slurm node's two tasks listen on the port base and the next)."""
    for _ in range(50):
        (port,) = _free_ports(1)
        if port >= 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


def _launch(model_dir, environments):
    processes = []
    for index, variables in enumerate(environments):
        log = open(f"{model_dir}.worker{index}.log", "a")
        flags = [f"--model_dir={model_dir}", *BINARY_FLAGS]
        if "SLURM_PROCID" in variables:
            flags += ["--cluster=slurm", f"--cluster_port_base={variables.pop('port_base')}"]
        env = subprocess_env(**variables)
        for name in SLURM_VARIABLES:
            if name not in variables:
                env.pop(name, None)
        processes.append(
            start_python("-m", "experiments.pretrain", *flags, env=env, stdout=log, stderr=subprocess.STDOUT)
        )
    return processes


def _log(model_dir, index):
    with open(f"{model_dir}.worker{index}.log") as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.xdist_group("binary_cluster")
def test_two_slurm_tasks_train_like_the_tf_config_cluster(tmp_path, tmp_path_factory):
    """Two local processes given the environment srun sets for a 2-task step on one node train exactly like the
    TF_CONFIG cluster of tests/test_multiworker.py (the same run: trained once for both tests)."""
    port_base = _consecutive_free_ports()
    slurm = [
        {
            "SLURM_PROCID": str(rank), "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NODELIST": "localhost",
            "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NTASKS": "2", "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0",
            "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "port_base": port_base,
        }
        for rank in range(2)
    ]
    start = time.time()
    wait_for_tf_config = start_uninterrupted_binary_cluster(tmp_path_factory)  # trains beside the Slurm tasks
    processes = _launch(tmp_path / "slurm", slurm)
    codes = _wait(processes, timeout=300)
    assert codes == [0, 0], "\n".join(_log(tmp_path / "slurm", i)[-2000:] for i in range(2))
    runs = {"slurm": tmp_path / "slurm", "tf_config": wait_for_tf_config()}
    print(f"2 Slurm tasks and 2 TF_CONFIG workers trained in {time.time() - start:.0f} s")

    for rank in range(2):
        assert f"Slurm task {rank} is worker {rank} of 2 at localhost:{port_base + rank} (0 GPUs); workers: " \
               f"localhost:{port_base}, localhost:{port_base + 1}" in _log(runs["slurm"], rank)
    for name in runs:
        assert os.path.exists(runs[name] / "FINISHED")  # written by the chief (Slurm: rank 0)
    difference = max(
        float(np.max(np.abs(a - b))) for a, b in zip(_model_weights(runs["slurm"]), _model_weights(runs["tf_config"]))
    )
    print(f"Slurm cluster vs TF_CONFIG cluster: max weight difference {difference:.3g}")
    assert difference <= 1e-5
    logs = []
    for name in runs:
        with open(runs[name] / "metrics.json") as f:
            logs.append(json.load(f)["final_logs"])
    assert logs[0].keys() == logs[1].keys()
    np.testing.assert_allclose([logs[0][k] for k in sorted(logs[0])], [logs[1][k] for k in sorted(logs[1])],
                               rtol=1e-5, atol=1e-6)
