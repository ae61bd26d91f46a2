"""tf.data service (supcon_tf.data_service): sharded stream content, order, training through it, the console script.

An in-process dispatcher and two workers on 127.0.0.1 serve the module; the
console-script tests start their own processes.
"""

import gc
import json
import os
import re
import signal
import socket
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import augment, data, data_service, runner
from supcon_tf.config import RunConfig
from helpers import run_binary_in_process, run_python, start_python

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("data_service")

BATCH = 32  # digits train split: 1,437 images = 44 batches a pass


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _source():
    images, labels = data.load_digits("train")
    return data.from_arrays(images, labels)


def _augment():
    return augment.get_augmentation("simclr", 16, crop_scale=(0.4, 1.0), flip=False)


def _local_batches(start_batch, count, seed=3):
    stream = data.make_multiview_dataset(
        _source(), batch_size=BATCH, augment=_augment(), seed=seed, repeat=True, start_batch=start_batch
    )
    return list(stream.take(count).as_numpy_iterator())


class _Service:
    """A dispatcher and `num_workers` workers in this process.

    Jobs nobody reads are collected after 1 s (instead of 60 s), and `stop`
    first waits for the workers' tasks to end: a worker stopped with a live
    task blocks (holding the GIL) until the task's pipeline winds down,
    which took up to a minute at the end of this module.
    """

    def __init__(self, num_workers):
        ports = [_free_port() for _ in range(num_workers)]
        self.dispatcher = data_service.start_dispatcher(
            _free_port(), worker_addresses=[f"localhost:{port}" for port in ports], job_gc_timeout_ms=1000
        )
        self.address = self.dispatcher.target  # grpc://localhost:PORT
        self.workers = [data_service.start_worker(self.address, port) for port in ports]

    def stop(self, patience=15.0):
        gc.collect()  # iterators still referenced by finished tests release their jobs
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline and any(worker._num_tasks() for worker in self.workers):
            time.sleep(0.25)
        for server in [*self.workers, self.dispatcher]:
            server.stop()


@pytest.fixture(scope="module")
def service():
    running = _Service(2)
    yield running
    running.stop()


def _read(address, start_batch, count, seed=3):
    stream = data_service.distribute_through(
        data_service.sharded_multiview_dataset(
            _source(), batch_size=BATCH, augment=_augment(), seed=seed, start_batch=start_batch, with_index=True
        ),
        address,
        job_name=data_service.job_name(seed, start_batch),
    )
    return list(stream.take(count).as_numpy_iterator())


# --- configuration --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["localhost:5050", "grpc://localhost", "grpc://localhost:0", "grpc://localhost:70000", "http://host:1", "grpc://:1",
     "grpc://a b:1", 5050, ""],
)
def test_config_rejects_bad_addresses_in_one_line(value):
    with pytest.raises(ValueError, match="data_service") as error:
        RunConfig.from_flat(data_service=value)
    assert "\n" not in str(error.value)


def test_config_accepts_addresses_and_refuses_unsupported_combinations():
    valid = ("grpc://localhost:5050", "grpc://10.0.0.7:1", "grpc://tf-data-0.cluster.local:65535", "grpc://[::1]:80")
    for value in valid:
        config = RunConfig.from_flat(data_service=value)
        assert RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig().runtime.data_service is None
    with pytest.raises(ValueError, match="data_service.*class_balanced"):
        RunConfig.from_flat(data_service="grpc://localhost:5050", sampler="class_balanced", batch_size=16)
    with pytest.raises(ValueError, match="data_service.*multi_worker"):
        RunConfig.from_flat(data_service="grpc://localhost:5050", strategy="multi_worker")
    from experiments import common, flagging

    assert "data_service" in flagging.help_texts(RunConfig) and "data_service" in common.FLAGS


def test_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match="service_address"):
        data_service.distribute_through(tf.data.Dataset.range(3), "localhost", job_name="x")
    with pytest.raises(ValueError, match="job_name"):
        data_service.distribute_through(tf.data.Dataset.range(3), "localhost:1", job_name="")
    with pytest.raises(ValueError, match="worker_addresses"):
        data_service.start_dispatcher(0, worker_addresses=[])
    with pytest.raises(ValueError, match="port"):
        data_service.start_worker("localhost:1", port=-1)
    with socket.socket() as taken:  # gRPC would share a taken port (SO_REUSEPORT); the helpers refuse it
        taken.bind(("", 0))
        taken.listen()
        with pytest.raises(ValueError, match="already in use"):
            data_service.start_dispatcher(taken.getsockname()[1], worker_addresses=["localhost"])
    a, b = data_service.job_name(0, 7), data_service.job_name(0, 7)
    assert a.startswith("supcon-seed0-b7-") and a != b  # a restarted trainer never joins a stale job


# --- the stream ---------------------------------------------------------------------------------------------------


def test_shards_hold_exactly_the_local_batches():
    start = 40  # batches 40..47 cross the pass boundary at 44
    expected = _local_batches(start, 8)
    for shard in range(2):
        sharded = data_service.sharded_multiview_dataset(
            _source(), batch_size=BATCH, augment=_augment(), seed=3, start_batch=start, num_shards=2,
            shard_index=shard, with_index=True,
        )
        for index, views, labels in sharded.take(4).as_numpy_iterator():
            assert (index - start) % 2 == shard
            np.testing.assert_array_equal(views, expected[index - start][0])
            np.testing.assert_array_equal(labels, expected[index - start][1])


def test_two_workers_deliver_every_batch_once_with_its_local_content(service):
    start, count = 5, 12
    received = _read(service.address, start, count)
    indices = [int(index) for index, _, _ in received]
    assert len(set(indices)) == count and min(indices) >= start  # no duplicates; arrival order may differ
    expected = _local_batches(start, max(indices) - start + 1)
    for index, views, labels in received:
        assert views.shape == (BATCH, 2, 16, 16, 1)
        np.testing.assert_array_equal(views, expected[index - start][0])
        np.testing.assert_array_equal(labels, expected[index - start][1])
    for shard in range(2):  # each worker's batches arrive in increasing order
        mine = [i for i in indices if (i - start) % 2 == shard]
        assert mine == sorted(mine)


def test_one_worker_keeps_the_exact_order():
    single = _Service(1)
    try:
        received = _read(single.address, 3, 6)
    finally:
        single.stop()
    assert [int(index) for index, _, _ in received] == list(range(3, 9))


# --- training through the service --------------------------------------------------------------------------------


def _config(service_address, **changes):
    values = dict(
        method="supcon", dataset="digits", crop_scale_min=0.4, flip=False, encoder_width=0.25, head_hidden=32,
        embedding_dim=16, batch_size=BATCH, epochs=1, steps_per_epoch=3, data_service=service_address, verbose=0,
        export=False,
    )
    values.update(changes)
    return RunConfig.from_flat(**values)


@pytest.mark.parametrize("strategy_name", ["default", "mirrored"])
def test_pretraining_reads_equal_batches_per_replica_from_the_service(service, strategy_name):
    config = _config(service.address, strategy=strategy_name)
    strategy = runner.build_strategy(config)
    replicas = strategy.num_replicas_in_sync
    assert replicas == (2 if strategy_name == "mirrored" else 1)
    source, _, num_classes = data.load_source(config, "train")
    shapes = []
    distributed = strategy.experimental_distribute_dataset(runner.train_dataset(config, source))
    for step, (views, labels) in enumerate(distributed):
        local = strategy.experimental_local_results(views) + strategy.experimental_local_results(labels)
        shapes.append([tuple(t.shape) for t in local])
        if step == 1:
            break
    per_replica = BATCH // replicas
    assert all(shape == [(per_replica, 2, 16, 16, 1)] * replicas + [(per_replica,)] * replicas for shape in shapes)
    with strategy.scope():
        model = runner.build_model(config, (16, 16, 1), num_classes, config.optim.steps_per_epoch)
    history = model.fit(runner.train_dataset(config, source, start_batch=7), epochs=1, steps_per_epoch=3, verbose=0)
    assert np.isfinite(history.history["loss"][-1])


def test_runner_run_with_the_data_service_finishes(service, tmp_path):
    config = _config(service.address, model_dir=str(tmp_path / "run"), batch_size=64, steps_per_epoch=2,
                     encoder_width=0.25, head_hidden=128, embedding_dim=64)
    metrics = runner.run(config)
    assert np.isfinite(metrics["final_train_loss"])
    assert os.path.exists(tmp_path / "run" / "FINISHED")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data_service"] == service.address


# --- the console script --------------------------------------------------------------------------------------------


def _script(*flags):
    return start_python("-m", "experiments.data_service", *flags)


def _wait_for_line(process, pattern, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        match = re.search(pattern, line)
        if match:
            return match
    process.kill()
    raise AssertionError(f"no line matching {pattern!r}; stderr: {process.stderr.read()[-2000:]}")


def _wildcard_listener(port):
    """True when the kernel lists a LISTEN socket on `port` bound to the wildcard address (Linux /proc/net)."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp on this system")
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if os.path.exists(table):
            with open(table) as lines:
                for row in (line.split() for line in list(lines)[1:]):
                    address, _, hex_port = row[1].partition(":")
                    if row[3] == "0A" and int(hex_port, 16) == port and not address.strip("0"):
                        return True
    return False


@pytest.mark.slow  # three processes (dispatcher, worker, trainer), about 20 s of CPU
def test_console_script_serves_the_trainer_and_stops_on_sigterm():
    dispatcher_port, worker_port = _free_port(), _free_port()
    # Started together: the worker waits for the dispatcher's port (and still stops on a signal meanwhile).
    dispatcher = _script("--role=dispatcher", f"--port={dispatcher_port}", f"--workers=localhost:{worker_port}")
    worker = _script("--role=worker", f"--dispatcher=localhost:{dispatcher_port}", f"--port={worker_port}")
    try:
        listening = _wait_for_line(dispatcher, r"dispatcher listening on (.+?), port (\d+) \(clients: grpc://")
        assert listening.groups() == ("all interfaces", str(dispatcher_port))
        address = f"grpc://localhost:{dispatcher_port}"
        _wait_for_line(worker, rf"worker serving at localhost:{worker_port} \(advertised\), listening on all interf")
        for port in (dispatcher_port, worker_port):  # the kernel's table agrees: a wildcard socket, not loopback only
            assert _wildcard_listener(port), f"port {port} is not listened on by a wildcard socket"
        assert [int(i) for i, _, _ in _read(address, 0, 3)] == [0, 1, 2]  # one worker: the exact order
        for process, name in ((worker, "worker"), (dispatcher, "dispatcher")):
            began = time.monotonic()
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, process.stderr.read()[-2000:]
            assert time.monotonic() - began < 5
            assert f"{name} stopped on SIGTERM" in process.stdout.read()
            port = dispatcher_port if name == "dispatcher" else worker_port
            warnings = [line for line in process.stderr.read().splitlines() if "supcon-data-service: warning:" in line]
            assert len(warnings) == 1, warnings
            for part in (f"{name}'s port {port} (all interfaces)", "unauthenticated", "run code", "every host",
                         "firewall", "network policy", "docs/security.md"):
                assert part in warnings[0], (part, warnings[0])
    finally:
        for process in (dispatcher, worker):
            if process.poll() is None:
                process.kill()


@pytest.mark.slow  # a console-script process signalled while it waits: seconds of a worker, mostly waiting
def test_console_script_worker_waiting_for_its_dispatcher_stops_on_sigint():
    worker = _script("--role=worker", f"--dispatcher=localhost:{_free_port()}", f"--port={_free_port()}")
    try:
        _wait_for_line(worker, r"worker waiting for the dispatcher")
        worker.send_signal(signal.SIGINT)
        assert worker.wait(timeout=30) == 0
        assert "worker stopped on SIGINT" in worker.stdout.read()
    finally:
        if worker.poll() is None:
            worker.kill()


def test_console_script_bad_flags_exit_2_with_one_line():
    cases = [
        (["--role=trainer", "--port=1"], "role"),
        (["--role=worker", "--port=abc", "--dispatcher=localhost:1"], "port"),
        (["--role=dispatcher", "--port=5050"], "workers"),
        (["--role=worker", "--port=5051", "--dispatcher=localhost"], "dispatcher"),
        (["--role=dispatcher", "--port=5050", "--workers=localhost:1,host:port"], "workers"),
        (["--no_such_flag=1"], "no_such_flag"),
        (["--role=worker", "--port=5051", "--dispatcher=localhost:5050", "stray"], "positional"),
    ]
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    for flags, message in cases:  # in-process: the binary's entry, its flag parser and its exit status
        result = run_binary_in_process("data_service", *flags)
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode == 2 and len(errors) == 1 and message in errors[0], result.stderr[-2000:]
        assert "Traceback" not in result.stderr
        # The binary blocks SIGINT / SIGTERM while it supervises; leaving them blocked here would pass the mask on
        # to every process this one starts later (they would never see Ctrl-C or SIGTERM).
        assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask, flags


# --- resume through the service (the run-folder lifecycle holds) ------------------------------------------------------


@pytest.mark.slow
def test_a_killed_run_resumes_through_the_same_service_like_an_uninterrupted_one(tmp_path):
    """One worker (exact order): SIGKILL before step 5, restart against the same service, equal end weights.

    The killed run is a real process (tests/fault_injection.py's SIGKILL); the uninterrupted reference and the
    restart run the same binary in this process (`run_binary_in_process`), which saves two TensorFlow start-ups.
    """
    import signal

    import keras

    single = _Service(1)
    flags = [
        "--preset=digits_supcon", "--epochs=2", "--steps_per_epoch=3", "--batch_size=32", "--encoder_width=0.25",
        "--backup_every_steps=2", "--deterministic", "--verbose=0", "--export=false",
        f"--data_service={single.address}",
    ]

    def train(model_dir):
        return run_binary_in_process("pretrain", f"--model_dir={model_dir}", *flags)

    try:
        reference = train(tmp_path / "reference")
        assert reference.returncode == 0, reference.stderr[-3000:]
        killed = run_python(
            "-m", "experiments.pretrain", f"--model_dir={tmp_path / 'run'}", *flags, fault="step:5"
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        resumed = train(tmp_path / "run")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    finally:
        single.stop()
    resumes = json.loads((tmp_path / "run" / "run_state.json").read_text())["resumes"]
    assert [r["global_step"] for r in resumes] == [4]  # inside epoch 1 (3 steps per epoch)

    def weights(model_dir):
        import supcon_tf  # noqa: F401

        return keras.saving.load_model(str(model_dir / "model.keras"), compile=False).get_weights()

    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(weights(tmp_path / "run"),
                                                                    weights(tmp_path / "reference")))
    print(f"through the tf.data service: killed before step 5, resumed at step 4, max weight difference {difference}")
    assert difference <= 1e-5


# --- where the servers listen (the launcher's report) ------------------------------------------------------------


def _proc_net(tmp_path, tcp="", tcp6=""):
    tmp_path.mkdir()
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    for name, rows in (("tcp", tcp), ("tcp6", tcp6)):
        if rows is not None:
            (tmp_path / name).write_text(header + rows)
    return str(tmp_path)


def test_listening_on_reads_the_kernels_table(tmp_path):
    from experiments import data_service as launcher

    wildcard6 = "   0: 00000000000000000000000000000000:13BA 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n"
    loopback4 = "   0: 0100007F:13BA 00000000:0000 0A 0 0 0 0 0 0\n"
    connected4 = "   1: 0100007F:13BA 0100007F:9C40 01 0 0 0 0 0 0\n"  # an established connection, not a listener
    assert launcher.listening_on(5050, _proc_net(tmp_path / "a", tcp6=wildcard6)) == "all interfaces"
    assert launcher.listening_on(5050, _proc_net(tmp_path / "b", tcp=loopback4 + connected4)) == "127.0.0.1"
    assert launcher.listening_on(5051, _proc_net(tmp_path / "c", tcp=loopback4)).startswith(
        "all interfaces (TensorFlow binds 0.0.0.0:5051; not read back"
    )
    if os.path.exists("/proc/net/tcp"):  # a real socket bound to loopback only is reported as such
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            assert launcher.listening_on(listener.getsockname()[1]) == "127.0.0.1"


def test_launcher_report_helpers_reject_bad_arguments():
    from experiments import data_service as launcher

    for port in (0, -1, 65536, True, "5050", None):
        with pytest.raises(ValueError, match="`port`"):
            launcher.listening_on(port)
        with pytest.raises(ValueError, match="`port`"):
            launcher.security_warning("worker", port, "all interfaces")
    with pytest.raises(ValueError, match="`proc_net`"):
        launcher.listening_on(5050, proc_net="")
    with pytest.raises(ValueError, match="`role`"):
        launcher.security_warning("trainer", 5050, "all interfaces")
    with pytest.raises(ValueError, match="`where`"):
        launcher.security_warning("worker", 5050, "a\nb")
    line = launcher.security_warning("dispatcher", 5050, "all interfaces")
    assert "\n" not in line and line.startswith("supcon-data-service: warning: the dispatcher's port 5050 (all interf")


# --- wait_for_dispatcher: a dead or wrong address fails in bounded time ----------------------------------------------


def _silent_listener():
    """A loopback TCP port that accepts connections (the kernel's backlog) but never speaks gRPC."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def _one_line_timeout(address, timeout_s):
    began = time.monotonic()
    with pytest.raises(data_service.DispatcherUnreachable) as error:
        data_service.wait_for_dispatcher(address, timeout_s)
    elapsed = time.monotonic() - began
    message = str(error.value)
    assert timeout_s - 0.05 <= elapsed < timeout_s + 1.5, elapsed
    assert "\n" not in message and message.startswith("`data_service`: no tf.data service dispatcher answered at ")
    assert f"within {timeout_s:g} s" in message and "supcon-data-service --role dispatcher" in message
    return message


def test_wait_for_dispatcher_gives_up_in_time_when_nothing_listens():
    port = _free_port()
    message = _one_line_timeout(f"grpc://127.0.0.1:{port}", 2)
    assert f"grpc://127.0.0.1:{port} within 2 s (connection refused" in message
    assert f"--port {port}" in message


def test_wait_for_dispatcher_gives_up_in_time_when_the_port_is_no_grpc_server():
    with _silent_listener() as listener:
        message = _one_line_timeout(f"127.0.0.1:{listener.getsockname()[1]}", 1.5)
    assert "accepts TCP connections but no dispatcher answered gRPC GetVersion" in message


def test_wait_for_dispatcher_returns_at_once_when_the_dispatcher_answers(service):
    port = service.address.rsplit(":", 1)[1]
    for address in (service.address, f"localhost:{port}", f"grpc://127.0.0.1:{port}"):
        began = time.monotonic()
        version = data_service.wait_for_dispatcher(address, 10)
        assert time.monotonic() - began < 2
        assert isinstance(version, int) and version > 0


def test_wait_for_dispatcher_refuses_a_workers_port_at_once(service):
    worker = service.workers[0]._address  # localhost:PORT, a gRPC server of the service that is no dispatcher
    began = time.monotonic()
    with pytest.raises(ValueError, match="answers gRPC but is not a tf.data service dispatcher") as error:
        data_service.wait_for_dispatcher(worker, 30, name="dispatcher")
    assert time.monotonic() - began < 5 and "\n" not in str(error.value)
    assert str(error.value).startswith("`dispatcher`: ")


@pytest.mark.parametrize(
    "arguments, named",
    [
        (("grpc://localhost:1", 0), "timeout_s"),
        (("grpc://localhost:1", -1.0), "timeout_s"),
        (("grpc://localhost:1", float("nan")), "timeout_s"),
        (("grpc://localhost:1", float("inf")), "timeout_s"),
        (("grpc://localhost:1", True), "timeout_s"),
        (("grpc://localhost:1", "5"), "timeout_s"),
        (("grpc://localhost:1", None), "timeout_s"),
        (("localhost", 1), "address"),
        (("http://localhost:1", 1), "address"),
        (("grpc://localhost:0", 1), "address"),
        (("grpc://localhost:70000", 1), "address"),
        ((5050, 1), "address"),
        ((None, 1), "address"),
    ],
)
def test_wait_for_dispatcher_rejects_bad_arguments_in_one_line(arguments, named):
    began = time.monotonic()
    with pytest.raises(ValueError, match=f"`{named}`") as error:
        data_service.wait_for_dispatcher(*arguments)
    assert time.monotonic() - began < 1  # checked before any attempt
    assert "\n" not in str(error.value) and "received" in str(error.value)
    assert not isinstance(error.value, data_service.DispatcherUnreachable)


def test_wait_for_dispatcher_rejects_a_bad_name():
    with pytest.raises(ValueError, match="`name`"):
        data_service.wait_for_dispatcher("grpc://localhost:1", 1, name="two words")


_WAITER = """
import signal, sys
from supcon_tf import data_service
try:  # a first, short wait: grpc is imported and a probe has run before the signals' wait begins
    data_service.wait_for_dispatcher(sys.argv[1], 0.5)
except data_service.DispatcherUnreachable:
    pass
print("waiting", flush=True)
try:
    data_service.wait_for_dispatcher(sys.argv[1], 60)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
def on_term(signum, frame):
    print("SIGTERM handler ran", flush=True)
    raise SystemExit(143)
signal.signal(signal.SIGTERM, on_term)
print("waiting", flush=True)
try:
    data_service.wait_for_dispatcher(sys.argv[1], 60)
except SystemExit as stop:
    print(f"SystemExit {stop.code}", flush=True)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
print("waiting", flush=True)
data_service.wait_for_dispatcher(sys.argv[1], 60)
print("returned", flush=True)
"""


@pytest.mark.slow  # a process signalled while it waits: seconds of a worker, mostly waiting
def test_signals_stop_wait_for_dispatcher_at_once():
    """SIGINT -> KeyboardInterrupt; an installed SIGTERM handler runs; SIGTERM's default action: each within seconds.

    One process (importing TensorFlow is the slow part), three waits in turn:
    SIGINT in the first, SIGTERM with a handler that raises SystemExit(143)
    in the second (the SystemExit leaves the wait), SIGTERM with the default
    action in the third (the process ends by the signal).
    """
    with _silent_listener() as listener:  # the slow case: TCP accepted, gRPC waits for its deadline
        address = f"grpc://127.0.0.1:{listener.getsockname()[1]}"
        waiter = start_python("-c", _WAITER, address)

        def interrupt(signum, marker):
            _wait_for_line(waiter, r"^waiting$")
            time.sleep(1.0)  # inside the wait: between, or in, the probes
            began = time.monotonic()
            waiter.send_signal(signum)
            if marker:  # printed by the except clause or the handler, before TensorFlow's slow teardown
                _wait_for_line(waiter, rf"^{marker}$", timeout=10)
            else:
                waiter.wait(timeout=10)
            assert time.monotonic() - began < 3, (signum, marker)

        try:
            interrupt(signal.SIGINT, "KeyboardInterrupt")
            interrupt(signal.SIGTERM, "SIGTERM handler ran")
            _wait_for_line(waiter, r"^SystemExit 143$", timeout=10)  # the handler's SystemExit ended the wait
            interrupt(signal.SIGTERM, None)
            assert waiter.wait(timeout=10) == -signal.SIGTERM, waiter.stderr.read()[-2000:]
            assert "returned" not in waiter.stdout.read()
        finally:
            if waiter.poll() is None:
                waiter.kill()


def test_a_training_binary_with_a_dead_dispatcher_fails_in_bounded_time_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    start = time.monotonic()
    result = run_binary_in_process(
        "pretrain", "--preset=digits_supcon", f"--model_dir={model_dir}",
        f"--data_service=grpc://localhost:{_free_port()}", "--data_service_timeout=2", "--verbose=0",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "no tf.data service dispatcher answered at grpc://localhost:" in last and "within 2 s" in last
    assert "Traceback" not in result.stderr
    assert not model_dir.exists()
    assert time.monotonic() - start < 60  # at most the 2 s wait (and the digits split)
