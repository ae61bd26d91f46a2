r"""Loss forward+backward benchmark: supcon_tf (dense / blockwise, graph / XLA) vs PyTorch, and the matmul floor.

Every configuration runs in a fresh process (so peak memory is its own);
the driver prints a markdown table and writes it with the raw JSON rows.

    .venv/bin/python benchmarks/loss_benchmark.py --out benchmarks/results/loss.md
    .venv/bin/python benchmarks/loss_benchmark.py --batches 1024 --classes 10 --impls tf_dense,torch_dense
    .venv/bin/python benchmarks/loss_benchmark.py --batches 8192,16384 --impls floor,tf_auto,torch_dense \
        --dense_max_batch 8192          # no dense form above batch 8192: their sizes are computed instead

Implementations (features [batch, 2 views, 128], L2-normalised, tau 0.1):
  tf_dense, tf_dense_xla          supcon_tf.losses.supcon_loss(implementation="dense"), tf.function (XLA)
  tf_blockwise, tf_blockwise_xla  the same with implementation="blockwise"
  tf_auto                         the default (implementation="auto")
  tf_weighted_blockwise           blockwise with weights from labels through a `pair_weights` rule: 1 for equal
                                  ids (the same loss as tf_blockwise, by the weighted path: each block's weights
                                  built inside the loop)
  tf_kernel_blockwise             blockwise with real weights from continuous labels (class id + U(0, 1)): a
                                  truncated Gaussian kernel rule, exp(-d^2 / 2 0.5^2) for |d| < 1, else 0
  tf_jaccard_blockwise            blockwise, positive_weighting="jaccard" on multi-hot labels [batch, classes]:
                                  each sample's class plus one other class drawn at random (seed 2)
  tf_gaussian_blockwise           blockwise, label_kernel="gaussian", kernel_bandwidth 0.5, on the continuous
                                  labels of tf_kernel_blockwise (class id + U(0, 1))
  tf_balanced_blockwise           blockwise, denominator="class_balanced" (BCL) on the class ids
  torch_dense                     the same formula written densely in PyTorch (below), autograd backward
  pml                             pytorch_metric_learning.losses.SupConLoss (temperature 0.1)
  floor                           the three matrix products any exact implementation needs:
                                  logits A C^T, and the two gradient products G C and G^T A (TensorFlow)
  tf_tiny, tf_tiny_xla            diagnostics: a tiny op (4 rows) in a tf.function, plain / XLA-compiled:
                                  what TensorFlow's graph runtime and XLA cost before any loss buffer
Block size: the library default (losses.DEFAULT_BLOCK_SIZE), or the
environment variable BENCH_BLOCK_SIZE (block-size sweeps).
Time: median of --repeats forward+backward passes after one warm-up.
Memory: peak resident set size of the process from the first (warm-up) pass
to the last, minus the resident size just before the first pass (libraries
and inputs excluded; TensorFlow's tracing and XLA compilation included).
TensorFlow rows also record `tf_tensor_peak_mib`, the peak of TensorFlow's
CPU allocator over the same passes (`tf.config.experimental.get_memory_info`:
the tensors, XLA's buffers included, without the runtime, compilation or
malloc overhead), and every row the 1-minute load average after its passes.
--losses_rev REV measures the losses (`supcon_tf/losses/`, formerly
`supcon_tf/losses.py`) as committed at REV (the revision's `supcon_tf`, read
with `git archive`; the resolved commit is recorded), e.g. the code before a change.
--dense_max_batch B: the dense forms (floor, tf_dense*, torch_dense, pml) are
not run above batch B; their rows record the computed size instead: the
[rows x rows] float32 logits alone, and PyTorch dense's measured peak at the
largest batch it ran (same classes) scaled by (rows / its rows)^2.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

from _results import export_library, write_results  # benchmarks/_results.py (this folder is on sys.path when run as a script)

DIM = 128
VIEWS = 2
TEMPERATURE = 0.1
ALL_IMPLS = (
    "floor", "tf_dense", "tf_dense_xla", "tf_blockwise", "tf_blockwise_xla", "tf_auto", "tf_weighted_blockwise",
    "tf_kernel_blockwise", "tf_jaccard_blockwise", "tf_gaussian_blockwise", "tf_balanced_blockwise", "torch_dense",
    "pml", "tf_tiny", "tf_tiny_xla",
)
WEIGHTED_IMPLS = ("tf_weighted_blockwise", "tf_kernel_blockwise")
# The named members of the loss family, blockwise: their options, and the labels they read (from the class ids).
NAMED_IMPLS = {
    "tf_jaccard_blockwise": (dict(positive_weighting="jaccard"), "multi_hot"),
    "tf_gaussian_blockwise": (dict(label_kernel="gaussian", kernel_bandwidth=0.5), "continuous"),
    "tf_balanced_blockwise": (dict(denominator="class_balanced"), "ids"),
}
DENSE_IMPLS = ("floor", "tf_dense", "tf_dense_xla", "torch_dense", "pml")
DIAGNOSTIC_IMPLS = ("tf_tiny", "tf_tiny_xla")  # only when asked for (not in the default --impls)


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """Samples /proc/self/statm in a thread: the peak RSS over a code region."""

    def __init__(self):
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __enter__(self):
        self.peak = _rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _inputs(batch, classes, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, VIEWS, DIM)).astype(np.float32)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    y = rng.integers(0, classes, size=batch).astype(np.int64)
    return z, y


def _losses_module(losses_rev):
    """`supcon_tf.losses`: of the working tree, or as committed at `losses_rev`.

    For a revision, that revision's whole `supcon_tf` package (read with `git
    archive` into a temporary folder, removed at exit) is imported in place of
    the working tree's: the losses were one module, `supcon_tf/losses.py`,
    before they became the package `supcon_tf/losses/`, and either form loads.
    """
    if losses_rev:
        folder = export_library(losses_rev)
        if "supcon_tf" in sys.modules:
            raise RuntimeError("--losses_rev: supcon_tf was imported before the revision's copy could be")
        sys.path.insert(0, folder)
    from supcon_tf import losses

    return losses


def _tf_step(impl, z, y, losses_rev=None):
    import tensorflow as tf

    if impl in ("tf_tiny", "tf_tiny_xla"):
        tiny = tf.constant(z[:4])
        op = tf.function(lambda a: tf.reduce_sum(tf.exp(a) * 2.0), jit_compile=impl.endswith("_xla"))
        return lambda: op(tiny).numpy()
    if impl == "floor":
        anchors = tf.constant(z.transpose(1, 0, 2).reshape(-1, DIM))

        @tf.function
        def step(a):
            logits = tf.matmul(a, a, transpose_b=True)
            g = logits * 1e-3  # stands in for dL/dlogits (same shape)
            return tf.reduce_sum(tf.matmul(g, a)) + tf.reduce_sum(tf.matmul(g, a, transpose_a=True))

        return lambda: step(anchors).numpy()
    features, labels = tf.constant(z), tf.constant(y)
    losses = _losses_module(losses_rev)
    supcon_loss = losses.supcon_loss
    block_size = int(os.environ.get("BENCH_BLOCK_SIZE", losses.DEFAULT_BLOCK_SIZE))
    options = {}
    if impl in NAMED_IMPLS:
        implementation = "blockwise"
        options, kind = NAMED_IMPLS[impl]
        if kind == "multi_hot":
            labels = tf.constant(_multi_hot_labels(y, int(y.max()) + 1))
        elif kind == "continuous":
            labels = tf.constant(_continuous_labels(y))
    elif impl in WEIGHTED_IMPLS:
        implementation = "blockwise"
        options["pair_weights"] = _equal_ids if impl == "tf_weighted_blockwise" else _kernel
        if impl == "tf_kernel_blockwise":
            labels = tf.constant(_continuous_labels(y))
    else:
        implementation = {"tf_dense": "dense", "tf_blockwise": "blockwise", "tf_auto": "auto"}[impl.replace("_xla", "")]

    @tf.function(jit_compile=impl.endswith("_xla"))
    def step(x, lab):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = supcon_loss(
                x, lab, temperature=TEMPERATURE, implementation=implementation, block_size=block_size, **options
            )
        return loss, tape.gradient(loss, x)

    def run():
        loss, grad = step(features, labels)
        return float(loss.numpy()) + float(grad[0, 0, 0].numpy())

    return run


def _equal_ids(anchor_labels, contrast_labels):
    """A `pair_weights` rule: 1 for equal ids (what labels give, through the weighted path)."""
    import tensorflow as tf

    return tf.cast(tf.equal(anchor_labels[:, None], contrast_labels[None, :]), tf.float32)


def _kernel(anchor_labels, contrast_labels):
    """A `pair_weights` rule on continuous labels: exp(-d^2 / (2 * 0.5^2)) for |d| < 1, else 0 (negatives)."""
    import tensorflow as tf

    d = anchor_labels[:, None] - contrast_labels[None, :]
    return tf.where(tf.abs(d) < 1.0, tf.exp(-tf.square(d) / 0.5), tf.zeros_like(d))


def _continuous_labels(y, seed=1):
    """Continuous labels for `tf_kernel_blockwise`: the class id plus U(0, 1), float32."""
    import numpy as np

    return (y + np.random.default_rng(seed).uniform(size=y.shape)).astype(np.float32)


def _multi_hot_labels(y, classes, seed=2):
    """Multi-hot labels for `tf_jaccard_blockwise`: each sample's class and one other class at random, float32."""
    import numpy as np

    rows = np.zeros((len(y), classes), np.float32)
    rows[np.arange(len(y)), y] = 1.0
    rows[np.arange(len(y)), np.random.default_rng(seed).integers(0, classes, size=len(y))] = 1.0
    return rows


def torch_supcon_dense(features, labels, temperature):
    """SupCon L_out (eq. 2), dense, written from the formula in PyTorch (the comparison baseline)."""
    import torch

    batch, views, dim = features.shape
    contrast = features.transpose(0, 1).reshape(views * batch, dim)
    all_labels = labels.repeat(views)
    logits = contrast @ contrast.T / temperature
    self_mask = torch.eye(views * batch, dtype=torch.bool)
    logits = logits.masked_fill(self_mask, -1e9)
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (all_labels[:, None] == all_labels[None, :]) & ~self_mask
    count = positive.sum(1)
    mean_log_prob = (log_prob * positive).sum(1) / count.clamp(min=1)
    return -(mean_log_prob[count > 0]).mean()


def _torch_step(impl, z, y):
    import torch

    torch.set_num_threads(os.cpu_count())
    features, labels = torch.from_numpy(z), torch.from_numpy(y)
    if impl == "torch_dense":
        loss_fn = lambda x: torch_supcon_dense(x, labels, TEMPERATURE)  # noqa: E731
    else:
        from pytorch_metric_learning.losses import SupConLoss

        pml_loss = SupConLoss(temperature=TEMPERATURE)
        flat_labels = labels.repeat(VIEWS)
        loss_fn = lambda x: pml_loss(x.transpose(0, 1).reshape(-1, DIM), flat_labels)  # noqa: E731

    def run():
        x = features.clone().requires_grad_(True)
        loss = loss_fn(x)
        loss.backward()
        return float(loss) + float(x.grad[0, 0, 0])

    return run


def _tf_allocator(reset):
    """TensorFlow's CPU allocator peak (bytes) since the last reset, or None (no TensorFlow, or no stats)."""
    if "tensorflow" not in sys.modules:
        return None
    import tensorflow as tf

    try:
        if reset:
            tf.config.experimental.reset_memory_stats("CPU:0")
        return tf.config.experimental.get_memory_info("CPU:0")["peak"]
    except Exception:  # noqa: BLE001 - stats not kept by this build / device
        return None


def run_one(impl, batch, classes, repeats, losses_rev=None):
    z, y = _inputs(batch, classes)
    if impl in ("torch_dense", "pml"):
        step = _torch_step(impl, z, y)
    else:
        step = _tf_step(impl, z, y, losses_rev)
    times = []
    _tf_allocator(reset=True)
    with _PeakRss() as rss:
        base = _rss_bytes()
        step()  # warm-up (tracing / compilation / allocator growth): counted in memory, not in time
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    tensor_peak = _tf_allocator(reset=False)
    row = {
        "impl": impl,
        "batch": batch,
        "classes": classes,
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_delta_mib": (rss.peak - base) / 2**20,
        "base_rss_mib": base / 2**20,
        "load_1min": os.getloadavg()[0],
    }
    if tensor_peak is not None:
        row["tf_tensor_peak_mib"] = tensor_peak / 2**20
    if losses_rev:
        row["losses_rev"] = losses_rev
    return row


def _dense_estimate(impl, batch, classes, rows):
    """The row of a dense form not run at `batch`: its computed size (see the module docstring)."""
    contrast_rows = VIEWS * batch
    row = {
        "impl": impl, "batch": batch, "classes": classes, "not_run": "dense form above --dense_max_batch",
        "dense_logits_mib": contrast_rows * contrast_rows * 4 / 2**20,
    }
    measured = [
        r for r in rows
        if r["impl"] == "torch_dense" and r["classes"] == classes and "error" not in r and "not_run" not in r
    ]
    if measured:
        ref = max(measured, key=lambda r: r["batch"])
        row["torch_dense_estimate_mib"] = ref["peak_delta_mib"] * (batch / ref["batch"]) ** 2
        row["estimate_from_batch"] = ref["batch"]
    return row


def _versions():
    versions = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    for module in ("tensorflow", "keras", "torch", "pytorch_metric_learning"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - optional
            versions[module] = "not installed"
    return versions


def drive(args):
    rows = []
    for batch in args.batches:
        for classes in args.classes:
            for impl in args.impls:
                if args.dense_max_batch is not None and batch > args.dense_max_batch and impl in DENSE_IMPLS:
                    rows.append(_dense_estimate(impl, batch, classes, rows))
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                repeats = args.repeats if batch < 8192 else max(2, args.repeats - 1)
                command = [sys.executable, __file__, "--single", impl, str(batch), str(classes), str(repeats)]
                if args.losses_rev:
                    command += ["--losses_rev", args.losses_rev]
                env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
                result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
                line = [ln for ln in result.stdout.splitlines() if ln.startswith("{")]
                row = json.loads(line[-1]) if result.returncode == 0 and line else {
                    "impl": impl, "batch": batch, "classes": classes, "error": result.stderr.strip()[-300:]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def table(rows):
    header = (
        "| batch | contrast rows | classes | implementation | median fwd+bwd (s) | peak memory (MiB) | "
        "TF tensors peak (MiB) | time / floor | time / torch dense | memory / torch dense | "
        "time / tf_blockwise | TF tensors / tf_blockwise | load |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    by_key = {(r["batch"], r["classes"], r["impl"]): r for r in rows}
    for r in rows:
        lead = f"| {r['batch']} | {VIEWS * r['batch']} | {r['classes']} | {r['impl']} |"
        if "error" in r:
            lines.append(f"{lead} error: {r['error'][:60]} | | | | | | | | |")
            continue
        if "not_run" in r:
            estimate = (
                f"; PyTorch dense by the measured accounting (batch {r['estimate_from_batch']} x "
                f"{(r['batch'] / r['estimate_from_batch']) ** 2:.0f}): {r['torch_dense_estimate_mib']:.0f} MiB"
                if "torch_dense_estimate_mib" in r else ""
            )
            lines.append(f"{lead} not run: logits alone {r['dense_logits_mib']:.0f} MiB{estimate} | | | | | | | | |")
            continue
        floor = by_key.get((r["batch"], r["classes"], "floor"))
        torch = by_key.get((r["batch"], r["classes"], "torch_dense"))
        plain = by_key.get((r["batch"], r["classes"], "tf_blockwise"))
        ok = lambda b, k: b and "error" not in b and "not_run" not in b and b[k] > 0  # noqa: E731
        ratio = lambda a, b, k, fmt=".2f": f"{a[k] / b[k]:{fmt}}" if ok(b, k) and k in a else "-"  # noqa: E731
        memory = ratio(r, torch, "peak_delta_mib", ".3f")
        if memory == "-" and torch and torch.get("torch_dense_estimate_mib"):
            memory = f"{r['peak_delta_mib'] / torch['torch_dense_estimate_mib']:.4f} (of the estimate)"
        tensors = f"{r['tf_tensor_peak_mib']:.0f}" if "tf_tensor_peak_mib" in r else "-"
        lines.append(
            f"{lead} {r['median_s']:.3f} | {r['peak_delta_mib']:.0f} | {tensors} | "
            f"{ratio(r, floor, 'median_s')} | {ratio(r, torch, 'median_s')} | {memory} | "
            f"{ratio(r, plain, 'median_s')} | {ratio(r, plain, 'tf_tensor_peak_mib')} | {r.get('load_1min', 0):.1f} |"
        )
    return "\n".join(lines)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024, 4096, 8192])
    parser.add_argument("--classes", type=lambda s: [int(x) for x in s.split(",")], default=[10, 100])
    default_impls = [impl for impl in ALL_IMPLS if impl not in DIAGNOSTIC_IMPLS]
    parser.add_argument("--impls", type=lambda s: s.split(","), default=default_impls)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=int, default=900)
    parser.add_argument("--out", default=None, help="Write the markdown table and raw rows here.")
    parser.add_argument("--dense_max_batch", type=int, default=None,
                        help="Do not run the dense forms above this batch; record their computed size.")
    parser.add_argument("--losses_rev", default=None,
                        help="Measure the losses (supcon_tf/losses/, formerly supcon_tf/losses.py) as committed "
                        "at this git revision (read with git archive).")
    parser.add_argument("--single", nargs=4, metavar=("IMPL", "BATCH", "CLASSES", "REPEATS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.single:
        impl, batch, classes, repeats = args.single
        print(json.dumps(run_one(impl, int(batch), int(classes), int(repeats), args.losses_rev)))
        return 0
    unknown = set(args.impls) - set(ALL_IMPLS)
    if unknown:
        parser.error(f"unknown --impls {sorted(unknown)}; valid: {ALL_IMPLS}")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.losses_rev:  # pin the revision: a symbolic one (HEAD) would move
        args.losses_rev = subprocess.run(
            ["git", "rev-parse", "--verify", f"{args.losses_rev}^{{commit}}"], cwd=root, capture_output=True,
            text=True, check=True,
        ).stdout.strip()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = os.getloadavg()
    rows = drive(args)
    load = os.getloadavg()
    code = f"supcon_tf.losses at {args.losses_rev}" if args.losses_rev else "supcon_tf.losses of the working tree"
    text = (
        f"Run {started}; {json.dumps(_versions())}; load average before the run {load_before[0]:.2f}, "
        f"after {load[0]:.2f}; {code}; block size "
        f"{os.environ.get('BENCH_BLOCK_SIZE', 'default')}\n\n"
        f"Command: `.venv/bin/python benchmarks/loss_benchmark.py {' '.join(argv)}`\n\n{table(rows)}\n"
    )
    print(text)
    write_results(text, rows, args.out, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main(sys.argv[1:]))
