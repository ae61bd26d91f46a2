r"""tf.data service for augmentation: per-worker throughput, and the service's cost against the local pipeline.

    .venv/bin/python benchmarks/data_service_benchmark.py --out benchmarks/results/data_service.md

Measures, on this machine:

1. Per-worker throughput: augmented views/s of the pipeline one service
   worker runs (`data_service.sharded_multiview_dataset` with one shard, in
   this process) for the SimCLR, AutoAugment and Stacked RandAugment
   policies (`augment.get_augmentation(name, size)`), at 32x32 (batch 256 x
   2 views) and 224x224 (batch 32 x 2 views), on synthetic uint8 images held
   in memory.
2. The service against the local pipeline, on localhost: two dispatchers in
   this process, one sharding over 1 worker, one over 2; the workers are
   `supcon-data-service` processes (`python -m experiments.data_service`).
   For each pipeline, the trainer side (this process, reading only) gets
   views/s, seconds per batch and the time to the first batch (job start),
   local / 1 worker / 2 workers; "added ms per batch" is the service's
   seconds per batch minus the local pipeline's. The "none" policy (resize
   only) isolates the transport: serialising a float32 batch, gRPC on
   localhost, deserialising; it is measured without compression (the
   default of `data_service.distribute_through`) and with TensorFlow's
   default, "AUTO" (snappy). With 2 workers it also records how far the
   arrival order strays from the batch index order.

All processes share this machine's CPUs (the CPU count and load average,
read at run time, are in the output): workers here compete with each other
and with the reading process, so the 2-worker rows show the service's
overhead, not the scaling that workers on their own hosts give.
Writes Markdown to --out and the same numbers as JSON next to it.
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import time

from _results import write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("simclr", "autoaugment", "stacked_randaugment")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _source(size, count):
    import numpy as np

    from supcon_tf import data

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).astype(np.int32)
    return data.from_arrays(images, labels)


def _stream(policy, size, batch, count, *, local=True, with_index=False, start_batch=0):
    """The worker-side pipeline: one local shard, or (local=False) with the service's shard placeholders."""
    from supcon_tf import augment, data_service

    kwargs = {"num_shards": 1, "shard_index": 0} if local else {}
    return data_service.sharded_multiview_dataset(
        _source(size, count), batch_size=batch, num_views=2, augment=augment.get_augmentation(policy, size), seed=0,
        start_batch=start_batch, with_index=with_index, **kwargs,
    )


def _time(dataset, batches, warmup):
    """(seconds to the first element, seconds per element after `warmup` more, elements seen)."""
    began = time.perf_counter()
    iterator = iter(dataset)
    elements = [next(iterator)]
    first = time.perf_counter() - began
    for _ in range(warmup):
        elements.append(next(iterator))
    began = time.perf_counter()
    for _ in range(batches):
        elements.append(next(iterator))
    return first, (time.perf_counter() - began) / batches, elements


def per_worker(batches_32, batches_224):
    rows = []
    for size, batch, count, batches in ((32, 256, 2048, batches_32), (224, 32, 128, batches_224)):
        for policy in POLICIES:
            _, seconds, _ = _time(_stream(policy, size, batch, count), batches, warmup=2)
            rows.append(
                {"policy": policy, "size": size, "batch": batch, "views_per_second": round(2 * batch / seconds, 1),
                 "seconds_per_batch": round(seconds, 4)}
            )
            print(rows[-1], flush=True)
    return rows


class Workers:
    """Worker processes of the console script, and the in-process dispatchers that shard over them."""

    def __init__(self, groups):
        from supcon_tf import data_service

        self.dispatchers, self.processes = {}, []
        env = dict(os.environ, PYTHONPATH=ROOT)
        for name, count in groups.items():
            ports = [_free_port() for _ in range(count)]
            dispatcher = data_service.start_dispatcher(_free_port(), worker_addresses=[f"localhost:{p}" for p in ports])
            self.dispatchers[name] = dispatcher
            for port in ports:
                self.processes.append(subprocess.Popen(
                    [sys.executable, "-m", "experiments.data_service", "--role=worker", f"--port={port}",
                     f"--dispatcher={dispatcher.target[len('grpc://'):]}"],
                    cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                ))

    def wait_serving(self, timeout=300):
        deadline = time.monotonic() + timeout
        for process in self.processes:
            while True:
                line = process.stdout.readline()
                if re.search(r"worker serving at", line):
                    break
                if (not line and process.poll() is not None) or time.monotonic() > deadline:
                    raise RuntimeError("a worker process did not start")

    def stop(self):
        import signal

        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        for dispatcher in self.dispatchers.values():
            dispatcher.stop()


def _order(indices, start):
    displacement = [abs(int(k) - (start + position)) for position, k in enumerate(indices)]
    return {
        "batches": len(indices), "in_place": sum(d == 0 for d in displacement), "max_displacement": max(displacement),
        "distinct": len(set(int(k) for k in indices)), "first_indices": [int(k) for k in indices[:24]],
    }


def service_overhead(workers, cases, batches):
    from supcon_tf import data_service

    rows, order = [], None
    for policy, size, batch, count in cases:
        _, local, _ = _time(_stream(policy, size, batch, count), batches, warmup=3)
        rows.append({"policy": policy, "size": size, "batch": batch, "mode": "local", "views_per_second":
                     round(2 * batch / local, 1), "seconds_per_batch": round(local, 4), "first_batch_seconds": None,
                     "added_ms_per_batch": 0.0})
        print(rows[-1], flush=True)
        modes = [(name, dispatcher, None) for name, dispatcher in workers.dispatchers.items()]
        if policy == "none":  # the transport alone: also with TensorFlow's default compression
            modes.insert(1, ("1 worker, compression AUTO", workers.dispatchers["1 worker"], "AUTO"))
        for name, dispatcher, compression in modes:
            stream = data_service.distribute_through(
                _stream(policy, size, batch, count, local=False, with_index=True),
                dispatcher.target,
                job_name=data_service.job_name(0, 0),
                compression=compression,
            )
            first, seconds, elements = _time(stream, batches, warmup=3)
            rows.append({"policy": policy, "size": size, "batch": batch, "mode": name,
                         "views_per_second": round(2 * batch / seconds, 1), "seconds_per_batch": round(seconds, 4),
                         "first_batch_seconds": round(first, 2),
                         "added_ms_per_batch": round(1000 * (seconds - local), 1)})
            print(rows[-1], flush=True)
            if name == "2 workers" and policy == "simclr" and size == 32:
                order = _order([element[0].numpy() for element in elements], 0)
    return rows, order


def _markdown(result):
    lines = [
        "# tf.data service for augmentation",
        "",
        f"Command: `{result['command']}`; {result['cpu_count']} CPUs, 1-min load average "
        f"{result['load_average_start']:.2f} at the start and {result['load_average_end']:.2f} at the end; "
        f"{result['date']}; {result['seconds']:.0f} s in all.",
        "",
        "## Per-worker throughput (the pipeline one worker runs, in one process)",
        "",
        "| policy | image size | batch | augmented views/s | s/batch |",
        "|---|---|---|---|---|",
    ]
    for row in result["per_worker"]:
        lines.append(f"| {row['policy']} | {row['size']}x{row['size']} | {row['batch']} x 2 views | "
                     f"{row['views_per_second']:.0f} | {row['seconds_per_batch']:.3f} |")
    lines += [
        "",
        "## Service against the local pipeline (localhost; dispatcher in the reading process, worker processes)",
        "",
        "| policy | image size | batch | pipeline | views/s read | s/batch | first batch (s) | added ms/batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["service"]:
        first = "-" if row["first_batch_seconds"] is None else f"{row['first_batch_seconds']:.2f}"
        lines.append(f"| {row['policy']} | {row['size']}x{row['size']} | {row['batch']} x 2 views | {row['mode']} | "
                     f"{row['views_per_second']:.0f} | {row['seconds_per_batch']:.3f} | {first} | "
                     f"{row['added_ms_per_batch']:+.1f} |")
    order = result.get("order_two_workers")
    if order:
        lines += [
            "",
            f"Arrival order with 2 workers (simclr 32x32, {order['batches']} batches from batch 0): "
            f"{order['distinct']} distinct batch indices, {order['in_place']} at their own position, largest "
            f"displacement {order['max_displacement']} positions; first indices: "
            f"{' '.join(map(str, order['first_indices']))}.",
        ]
    lines += ["", result["note"], ""]
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches_32", type=int, default=10, help="timed batches per policy at 32x32")
    parser.add_argument("--batches_224", type=int, default=3, help="timed batches per policy at 224x224")
    parser.add_argument("--service_batches", type=int, default=20, help="timed batches per service row")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, ROOT)
    began = time.time()
    load_start = os.getloadavg()[0]
    workers = Workers({"1 worker": 1, "2 workers": 2})  # start first: their TensorFlow import overlaps nothing timed
    try:
        workers.wait_serving()
        per_worker_rows = per_worker(args.batches_32, args.batches_224)
        cases = [("none", 32, 256, 2048), ("simclr", 32, 256, 2048), ("none", 224, 32, 128)]
        service_rows, order = service_overhead(workers, cases, args.service_batches)
    finally:
        workers.stop()
    result = {
        "command": "python benchmarks/data_service_benchmark.py " + " ".join(argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg()[0],
        "seconds": time.time() - began,
        "per_worker": per_worker_rows,
        "service": service_rows,
        "order_two_workers": order,
        "note": (
            "All processes share this machine's CPUs, and other jobs ran on it too (load average above): rows move "
            "by tens of percent from run to run. Read the service rows as the overhead on one host, not as scaling: "
            "the worker processes here compete for the same cores as the local pipeline, while workers on their own "
            "hosts each add their per-worker throughput. 'none' = resize only, i.e. the transport alone (float32 "
            "views, gRPC on localhost), without compression (the default of data_service.distribute_through) and "
            "with TensorFlow's default compression 'AUTO' (snappy)."
        ),
    }
    text = _markdown(result)
    print(text)
    write_results(text, result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
