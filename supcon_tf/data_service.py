"""Augmentation on tf.data service workers (`tf.data.experimental.service`): servers and the training stream.

SupCon at scale is input-bound: every image is augmented V times per step.
The tf.data service moves that work to other processes or hosts: a
*dispatcher* hands out jobs, *workers* run the input pipeline, and the
trainer only reads finished batches over gRPC. This module starts the two
kinds of server (`start_dispatcher`, `start_worker`; the console script is
`supcon-data-service`, `experiments/data_service.py`), builds the worker-side
stream (`sharded_multiview_dataset`) and attaches it to the service
(`distribute_through`). `supcon_tf.runner.train_dataset` uses them when
`RunConfig.data_service` is set; `wait_for_dispatcher` checks, in bounded
time, that a dispatcher answers at that address before a run starts.

Security: the servers listen on all interfaces and run whatever dataset
graph a client registers, without authentication; TensorFlow offers no
option to bind one interface or to authenticate. Run them only where every
host that can reach their ports is trusted (`docs/security.md`).

Decision: static sharding by batch index (`ShardingPolicy.HINT`)
---------------------------------------------------------------------

The training stream is endless and batch `k` is a pure function of
`(seed, k)`: the pass `k // batches_per_pass` is a stateless permutation
seeded by `(seed, pass)` (`data.make_multiview_dataset`), and the views of batch `k`
are augmented with the stateless seed `fold_in([seed, salt], k)`. The three
processing modes of the service were tried on it (measured here, with worker
processes on localhost; `tests/test_data_service.py` checks the result):

* `ShardingPolicy.OFF` ("parallel_epochs"): every worker produces the whole
  stream. With one worker the trainer receives batches `start_batch,
  start_batch + 1, ...` in exactly the local order. With two workers every
  batch arrives twice (measured: 0 1 2 3 4 5 6 0 1 7 2 ...), because our
  stream is deterministic rather than "shuffled differently per worker";
  the work is duplicated, not shared. Rejected.
* `ShardingPolicy.DYNAMIC` ("distributed_epoch"): the dispatcher hands out
  splits of the pipeline's *source*. In ours that is the pass counter
  `range(first_pass, ...)`, so each worker gets whole passes; but the batch
  counter that seeds the augmentation (`enumerate`) runs on each worker
  from `start_batch`. Measured with two workers on digits (22 batches a
  pass): the first worker delivered batches 0-21 exactly, the second
  delivered pass 1's images and labels (batches 22, 23, ...) augmented with
  the seeds of batches 0, 1, ...; pass-sized interleaving, duplicated
  augmentation seeds, and no way to resume at a batch. Rejected.
* `ShardingPolicy.HINT` (static sharding), chosen: the worker-side stream
  is built as shuffle -> batch -> number the batches `k = start_batch, ...`
  -> `shard(SHARD_HINT, SHARD_HINT)` -> augment. The service replaces the
  hint with `shard(num_workers, worker_index)`, so worker `w` of `N`
  augments only the batches `k` with `(k - start_batch) % N == w`; the
  augmentation seed comes from `k` itself, not from the worker's position.

Consequences:

(a) Equal batches for every replica: batching (`drop_remainder=True`)
    happens on the workers, before the service, so every element is one
    full global batch `[B, V, H, W, C]` with a static shape; the trainer's
    strategy splits it into `B / replicas` rows per replica, as without the
    service.
(b) Order: every batch of the stream is produced exactly once per job, and
    batch `k` holds exactly the images and views of batch `k` of
    `data.make_multiview_dataset(..., start_batch=...)` (tested, to the
    bit). With one worker the arrival order is also exact (tested). With
    N > 1 workers it is not, and we found no way to make it so with the
    service's API: the trainer reads first come, first served; each
    worker's batches arrive in increasing `k`, interleaved in whatever
    order the workers are ready. Measured with two worker processes
    (simclr, 32x32, batch 256, benchmarks/data_service_benchmark.py):
    0 1 3 2 4 5 7 6 ... (at most 1 position from place) in one run,
    0 2 1 3 4 6 8 10 5 7 ... (at most 3) in another. With the service's
    default worker heartbeat (not ours, 1 s), one worker ran 20 batches
    ahead at job start before the other had its task
    (0 2 4 ... 38 1 3 5 40 ...). Coordinated reads
    (`num_consumers=1`) alternate workers but with an offset (measured
    1 3 5 0 7 2 9 4 ...), so they do not restore the order either. The
    displacement stays small while the workers keep pace with each other
    (or the trainer is the bottleneck, so their buffers are full); a
    persistently slower worker falls behind in proportion to the speed
    difference. So with several workers, step `s` trains on batch `s` up to
    that displacement; every batch's content is the local stream's.
(c) Throughput: each worker augments 1/N of the batches (none with
    `augment_on="device"`: then it only reads and batches). What every worker
    still does in full is reading, shuffling and batching the *source*
    (cheap for in-memory digits / CIFAR; for ImageNet from TFDS it is the
    JPEG decode and resize, which then does not scale with N).

Epoch boundaries and shuffling: unchanged. Epochs are the trainer's
`steps_per_epoch` counting of batches; the passes over the data and their
stateless shuffle are computed on every worker identically, batches never
straddle passes (each pass drops its remainder, as locally), and the shard
is taken after batching, so a batch is never split between workers.

Resume after a crash: the run folder lifecycle holds as without the
service. The restarted trainer rebuilds its stream at `start_batch` (the
step of the newest backup) with a *new* job, named
`supcon-seed<S>-b<start_batch>-<random>`: the start batch makes the job's
place in the stream visible in the dispatcher's logs, and the random suffix
guarantees that a trainer never attaches to a stale job of an earlier,
crashed trainer with the same start batch (which would hand it batches from
the middle of that job). Stale jobs are garbage collected by the dispatcher
once no client has read them for `job_gc_timeout_ms` (60 s here). With one
worker the resumed run reads exactly the batches an uninterrupted run reads
from that step on. With several workers the crashed trainer had consumed
the batches of each worker's shard up to its own point, not exactly batches
`< start_batch`: the few batches of the displacement window around the
backup step are seen twice or not at all after the resume.

What static sharding asks of the deployment:

* The dispatcher needs the fixed list of workers (`worker_addresses`); the
  number of shards is its length. A worker registers with the address it
  advertises (`host:port`), which must match one entry ("host" or
  "host:%port%" match any port).
* If a worker restarts during a job, it produces its shard again from the
  job's first batch (the service's documented static-sharding behaviour,
  not measured here): batches repeat. While a listed worker is down, its
  shard is missing. Restarting the trainer (new job) realigns everything.
* The trainer reads from every worker (`target_workers="ANY"`). With the
  default, static sharding reads only from workers in the trainer's own
  process: a trainer with worker processes received nothing (measured).
* Batches travel as float32 views (4 bytes a pixel): 6.3 MB for 256 x 2 x
  32 x 32 x 3, 38.5 MB for 32 x 2 x 224 x 224 x 3, uncompressed by default
  (`distribute_through(compression=...)`). With `augment_on="device"` the
  workers only read, shuffle and batch, and send uint8 images with their
  view seeds: 1 byte a pixel for all the views together, 1 / (4 x views) of
  the float32 bytes (4.8 MB instead of 38.5 MB for the 224x224 batch above),
  and the trainer's accelerator augments. The benchmark
  (`benchmarks/data_service_benchmark.py`, results in
  `benchmarks/results/data_service.md`) measures the added time per batch.
* Paths in the pipeline (image folders, TFDS data_dir) must be readable on
  the workers: the dataset graph is shipped, not the data.

Not supported (refused by `RunConfig`, one ValueError each):
`sampler="class_balanced"` (its index stream is a Python generator,
`Dataset.from_generator`, which cannot be serialised to a worker) and
`strategy="multi_worker"` (every trainer process would need the same global
batches; a shared job splits them instead).
"""

from __future__ import annotations

import errno
import socket
import time
import uuid

import tensorflow as tf

from supcon_tf import data
from supcon_tf._checks import host_port, is_int, positive_number

_service = tf.data.experimental.service

PROCESSING_MODE = _service.ShardingPolicy.HINT
# Worker -> dispatcher heartbeat; with the service's default, a new job's tasks started about 20 s late here.
DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_JOB_GC_TIMEOUT_MS = 60_000

# wait_for_dispatcher: the longest single blocking step (a TCP connect or one gRPC call), and the pause between
# attempts. Python runs signal handlers between steps (and gRPC's blocking call checks for them every 0.2 s).
PROBE_SLICE_S = 0.5
PROBE_PAUSE_S = 0.2
# The dispatcher's gRPC method that TensorFlow's own clients call first (to compare versions); request: empty.
_GET_VERSION = "/tensorflow.data.DispatcherService/GetVersion"

def parse_address(address, name="address"):
    """`"HOST:PORT"` or `"grpc://HOST:PORT"` -> `(host, port)`; a ValueError naming `name` otherwise."""
    return host_port(address, name)


def _check_port(port, name="port"):
    if not is_int(port) or not 0 <= port < 65536:
        raise ValueError(f"`{name}` must be an int in [0, 65536) (0: any free port), received: {name}={port!r}")
    return int(port)


def _check_port_free(port):
    """Raises ValueError when `port` (> 0) is taken on this host.

    gRPC binds with SO_REUSEPORT, so a second server on a taken port would
    start "successfully" and share the port's connections with the first; a
    plain bind here tells the two cases apart.
    """
    if not port:
        return
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ValueError(f"`port` {port} is already in use on this host, received: port={port}") from None
        finally:
            probe.close()


def check_worker_address(entry, name="worker_addresses"):
    """Checks one dispatcher `worker_addresses` entry ("host", "host:port" or "host:%port%"); returns it normalised."""
    if isinstance(entry, str) and entry.endswith(":%port%"):
        parse_address(entry[: -len(":%port%")] + ":1", name)
        return entry
    if isinstance(entry, str) and ":" not in entry.strip("[]"):
        parse_address(f"{entry}:1", name)
        return entry
    host, port = parse_address(entry, name)
    return f"{host}:{port}"


def start_dispatcher(port=0, *, worker_addresses, job_gc_timeout_ms=DEFAULT_JOB_GC_TIMEOUT_MS):
    """Starts a tf.data service dispatcher in this process and returns the `DispatchServer`.

    It listens on all interfaces (TensorFlow binds "0.0.0.0:port"; no option
    binds one) and accepts unauthenticated requests: see docs/security.md.

    Args:
      port: port to bind (0: any free port; read it back from `server.target`);
        a port already in use is a ValueError.
      worker_addresses: the fixed list of workers, one entry per worker
        ("host:port", or "host" / "host:%port%" for any port). Static
        sharding (the module docstring) splits every job into
        `len(worker_addresses)` shards; a job waits until they registered.
      job_gc_timeout_ms: a job no client has read for this long is deleted
        (it also frees the workers' buffers of a crashed trainer's job).

    Returns:
      The running `tf.data.experimental.service.DispatchServer`; `stop()` it.
    """
    port = _check_port(port)
    if isinstance(worker_addresses, str) or not worker_addresses:
        raise ValueError(
            "`worker_addresses` must be a non-empty list of worker addresses (host:port), "
            f"received: worker_addresses={worker_addresses!r}"
        )
    entries = [check_worker_address(entry) for entry in worker_addresses]
    _check_port_free(port)
    if not is_int(job_gc_timeout_ms) or job_gc_timeout_ms < 1:
        raise ValueError(
            f"`job_gc_timeout_ms` must be a positive int, received: job_gc_timeout_ms={job_gc_timeout_ms!r}"
        )
    config = _service.DispatcherConfig(
        port=port,
        worker_addresses=entries,
        job_gc_check_interval_ms=min(job_gc_timeout_ms, 10_000),
        job_gc_timeout_ms=job_gc_timeout_ms,
    )
    return _service.DispatchServer(config)


def start_worker(dispatcher_address, port=0, *, host="localhost", heartbeat_interval_ms=DEFAULT_HEARTBEAT_MS):
    """Starts a tf.data service worker in this process and returns the `WorkerServer`.

    It listens on all interfaces, whatever `host` says (TensorFlow binds
    "0.0.0.0:port"), and runs the dataset graphs it is given without
    authentication: see docs/security.md.

    Args:
      dispatcher_address: "HOST:PORT" (or "grpc://HOST:PORT") of the dispatcher.
      port: port to bind (0: any free port); a port already in use is a ValueError.
      host: the host name trainers reach this worker at; the worker
        advertises `host:port`, which must match an entry of the
        dispatcher's `worker_addresses`.
      heartbeat_interval_ms: how often the worker asks the dispatcher for new
        tasks (a new job starts on this worker within about one interval).

    Returns:
      The running `tf.data.experimental.service.WorkerServer`; `stop()` it.
    """
    dispatcher_host, dispatcher_port = parse_address(dispatcher_address, "dispatcher_address")
    port = _check_port(port)
    parse_address(f"{host}:1", "host")
    _check_port_free(port)
    if not is_int(heartbeat_interval_ms) or heartbeat_interval_ms < 1:
        raise ValueError(
            f"`heartbeat_interval_ms` must be a positive int, received: heartbeat_interval_ms={heartbeat_interval_ms!r}"
        )
    config = _service.WorkerConfig(
        dispatcher_address=f"{dispatcher_host}:{dispatcher_port}",
        worker_address=f"{host}:%port%",
        port=port,
        heartbeat_interval_ms=heartbeat_interval_ms,
    )
    return _service.WorkerServer(config)


class DispatcherUnreachable(ValueError):
    """No tf.data service dispatcher answered at the address in time (a ValueError: bad input, exit status 2)."""


def _varint_field_1(payload):
    """Field 1 (a varint) of a serialised protobuf message, or 0 when absent (proto3 default); None if unreadable."""
    if not payload:
        return 0
    if payload[0] != 0x08:
        return None
    value = shift = 0
    for byte in payload[1:11]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value
    return None


def _probe_once(host, port, slice_s, name):
    """One attempt: `(version, None)` if a dispatcher answered, else `(None, reason)`; raises if it is no dispatcher."""
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=slice_s):
            pass
    except ConnectionRefusedError:
        return None, "connection refused: nothing listens on that port"
    except socket.gaierror as error:
        return None, f"cannot resolve host {host!r}: {error.strerror or error}"
    except TimeoutError:
        return None, f"no TCP connection within {slice_s:g} s"
    except OSError as error:
        return None, f"cannot connect: {error.strerror or error}"
    import grpc  # a dependency of TensorFlow itself

    # A channel of its own (local subchannel pool): no reconnect back-off inherited from an earlier attempt.
    with grpc.insecure_channel(f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        get_version = channel.unary_unary(_GET_VERSION)
        # The call's future, waited on in this thread: a signal's exception (KeyboardInterrupt, a SIGTERM handler's
        # SystemExit) leaves the wait, and the call is cancelled. The blocking call waits inside gRPC's completion
        # queue, which now and then lost a SIGINT that came mid-call (the wait then ran to its timeout).
        call = get_version.future(b"", timeout=slice_s, wait_for_ready=True)
        try:
            response = call.result()
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                raise ValueError(
                    f"`{name}`: the server at grpc://{host}:{port} answers gRPC but is not a tf.data service "
                    "dispatcher (it does not implement DispatcherService.GetVersion; a worker's port?): give the "
                    "dispatcher's address"
                ) from None
            name = getattr(code, "name", str(code))
            return None, f"the port accepts TCP connections but no dispatcher answered gRPC GetVersion: {name}"
        except BaseException:  # a signal's exception: the call ends here too
            call.cancel()
            raise
    version = _varint_field_1(response)
    if version is None:
        return None, "the port answered GetVersion with an unreadable response"
    return version, None


def wait_for_dispatcher(address, timeout_s=60.0, *, name="data_service"):
    """Returns once a tf.data service dispatcher answers at `address`; raises `DispatcherUnreachable` after `timeout_s`.

    The trainer calls it before it writes anything: TensorFlow's own client
    (`distribute`) retries a dispatcher that does not answer forever, inside
    one C++ call that holds the interpreter, so a training process given a
    wrong or dead address hung with no output and ignored SIGINT / SIGTERM.

    How it probes, attempt after attempt until `timeout_s` has passed:

    1. A TCP connection to HOST:PORT (at most `PROBE_SLICE_S`). A refused
       connection proves quickly that nothing listens; an accepted one does
       not prove a dispatcher (any server accepts).
    2. One gRPC call, `tensorflow.data.DispatcherService/GetVersion` (the
       call TensorFlow's own client makes first; an empty request), on a
       fresh channel with a deadline of at most `PROBE_SLICE_S`. Only a
       dispatcher answers it. A gRPC server without that method (a tf.data
       worker's port, a tf.distribute server) answers UNIMPLEMENTED: a
       ValueError at once, as waiting cannot help.

    Between attempts it sleeps `PROBE_PAUSE_S` in the calling thread. No
    step blocks longer than `PROBE_SLICE_S` (resolving a host name aside:
    the system resolver has its own timeout), so Python's signal handlers
    run within that time: SIGINT raises KeyboardInterrupt out of this call,
    SIGTERM's default action ends the process, and a handler installed for
    it runs (and stops the wait if it raises, e.g. SystemExit).

    Rejected: reading one element of a tiny dataset through the service in a
    (daemon) thread with a timeout. It needs the workers too (a statically
    sharded job waits for every listed worker), registers a dataset and a job
    on the dispatcher, and on timeout leaves the thread blocked in
    TensorFlow's endless retry: a daemon thread does not block interpreter
    exit, but it keeps the job alive and its C++ call may still be running
    during interpreter teardown. The gRPC probe starts no thread, leaves
    nothing on the dispatcher, and needs no worker.

    Args:
      address: the dispatcher, "grpc://HOST:PORT" (as `RunConfig.data_service`)
        or "HOST:PORT".
      timeout_s: seconds to wait, a finite number > 0 (`RunConfig.data_service_timeout`).
      name: the setting named in the timeout message (default "data_service", the flag).

    Returns:
      The dispatcher's tf.data service protocol version (an int).

    Raises:
      ValueError: a bad argument, or a gRPC server at `address` that is no dispatcher.
      DispatcherUnreachable (a ValueError): no dispatcher answered within `timeout_s`;
        one line naming the address, the time and the last reason.
    """
    host, port = parse_address(address, "address")
    timeout = positive_number(timeout_s, "timeout_s")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"`name` must be the setting's name (an identifier), received: name={name!r}")
    deadline = time.monotonic() + timeout
    reason = "no attempt finished"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        version, reason = _probe_once(host, port, min(PROBE_SLICE_S, remaining), name)
        if version is not None:
            return version
        pause = min(PROBE_PAUSE_S, deadline - time.monotonic())
        if pause > 0:
            time.sleep(pause)
    raise DispatcherUnreachable(
        f"`{name}`: no tf.data service dispatcher answered at grpc://{host}:{port} within {timeout:g} s ({reason}); "
        f"start one with `supcon-data-service --role dispatcher --port {port} --workers HOST:PORT,...` and its "
        "workers, or check the address"
    )


def job_name(seed, start_batch):
    """A fresh job name for the stream of `seed` from `start_batch`: `supcon-seed<S>-b<K>-<random>`.

    The random part makes every stream its own job: a restarted trainer never
    attaches to a stale job of a crashed one that started at the same batch.
    """
    return f"supcon-seed{int(seed)}-b{int(start_batch)}-{uuid.uuid4().hex[:12]}"


def distribute_through(dataset, service_address, *, job_name, max_outstanding_requests=None, compression=None):
    """`dataset` processed by the tf.data service at `service_address` (static sharding, see the module docstring).

    Everything in `dataset` runs on the service's workers, which must be the
    ones the dispatcher lists; the result is read here from all of them
    (`target_workers="ANY"`), first come first served.

    Args:
      dataset: the worker-side dataset, with `shard(tf.data.experimental.SHARD_HINT,
        tf.data.experimental.SHARD_HINT)` where the work is to be split (e.g.
        `sharded_multiview_dataset`); without a hint every worker produces
        every element.
      service_address: the dispatcher, "grpc://HOST:PORT" or "HOST:PORT".
      job_name: a non-empty string; datasets with the same name share one job.
      max_outstanding_requests: optional cap on elements requested at once
        (memory: about this many batches).
      compression: None (default) sends the batches as they are; "AUTO"
        (TensorFlow's default) lets the runtime compress them (snappy).
        Float32 views barely compress, and decompressing costs the trainer's
        CPU, which the service is meant to free: on localhost AUTO made the
        transport 1.6x (32x32) to 2.5x (224x224) slower
        (benchmarks/results/data_service.md). Use "AUTO" when the network,
        not the CPU, is the limit.

    Returns:
      A `tf.data.Dataset` with `dataset`'s element spec.
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"`dataset` must be a tf.data.Dataset, received: dataset={dataset!r}")
    host, port = parse_address(service_address, "service_address")
    if not isinstance(job_name, str) or not job_name:
        raise ValueError(f"`job_name` must be a non-empty string, received: job_name={job_name!r}")
    if compression not in (None, "AUTO"):
        raise ValueError(f"`compression` must be None or 'AUTO', received: compression={compression!r}")
    if max_outstanding_requests is not None and (not is_int(max_outstanding_requests) or max_outstanding_requests < 1):
        raise ValueError(
            "`max_outstanding_requests` must be None or an int >= 1, "
            f"received: max_outstanding_requests={max_outstanding_requests!r}"
        )
    return dataset.apply(
        _service.distribute(
            processing_mode=PROCESSING_MODE,
            service=f"grpc://{host}:{port}",
            job_name=job_name,
            max_outstanding_requests=max_outstanding_requests,
            compression=compression,
            target_workers="ANY",
        )
    )


def sharded_multiview_dataset(
    source,
    *,
    batch_size,
    num_views=2,
    augment,
    seed=0,
    start_batch=0,
    shuffle_buffer=10000,
    num_shards=tf.data.experimental.SHARD_HINT,
    shard_index=tf.data.experimental.SHARD_HINT,
    with_index=False,
    augment_on="host",
):
    """The endless stream of `data.make_multiview_dataset(..., repeat=True)`, sharded by batch before augmentation.

    Batch `k` (from `start_batch` on) holds the same images, labels and views
    (or view seeds) as batch `k` of `data.make_multiview_dataset(source,
    batch_size=..., num_views=..., augment=..., seed=..., repeat=True,
    start_batch=start_batch, augment_on=augment_on)`; only the batches of
    this shard are built. The default shard arguments are the service's
    placeholders, replaced on each worker by `(num_workers, worker_index)`;
    pass ints to run a shard locally.

    Args:
      source: a source dataset `(image [H, W, C], label [])`, finite.
      batch_size, num_views, augment, seed, shuffle_buffer, augment_on: as in
        `data.make_multiview_dataset` ("device": the workers only read,
        shuffle and batch; the trainer's model augments).
      start_batch: int >= 0, the first batch of the stream (resume).
      num_shards, shard_index: the shard to keep (batches `k` with
        `(k - start_batch) % num_shards == shard_index`).
      with_index: also yield the batch index `k` first (tests, benchmarks).

    Returns:
      A `tf.data.Dataset` of `(views float32 [B, V, H', W', C], labels int32 [B])`,
      or with `augment_on="device"` `((images [B, H, W, C], view_seeds int64 [B, V, 2]),
      labels int32 [B])` (`(k, ...)` with `with_index`), prefetched.
    """
    return data.make_multiview_dataset(
        source, batch_size=batch_size, num_views=num_views, augment=augment, seed=seed, shuffle_buffer=shuffle_buffer,
        repeat=True, start_batch=start_batch, augment_on=augment_on, shard=(num_shards, shard_index),
        with_index=with_index,
    )
