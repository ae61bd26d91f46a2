r"""One-command accelerator check: device facts, the ResNet-50 SupCon train step, the loss at large N, precision,
host against device augmentation.

    python benchmarks/accelerator_check.py --out_dir benchmarks/results              # one GPU (sized for < 8 min)
    python benchmarks/accelerator_check.py --out_dir benchmarks/results --strategy tpu --tpu local   # TPU VM
    python benchmarks/accelerator_check.py --smoke --out_dir /tmp/check              # tiny sizes, CPU, < 1 min

Writes `accelerator_check.json` (every number and fact) and
`accelerator_check.md` (the same numbers as Markdown tables, with the
command) into `--out_dir`; each file is written to a temporary name first and
then renamed, so a reader never sees half a file.

What it measures (all on synthetic data held in memory; nothing is downloaded):

1. Device facts, read at run time: TensorFlow / Keras versions,
   `tf.sysconfig.get_build_info()` (CUDA / cuDNN of the build), the physical
   devices and `tf.config.experimental.get_device_details` (name, compute
   capability), `nvidia-smi` (driver, total memory) when it exists, whether
   TensorFloat-32 is on, host CPU count, the `tf.distribute` strategy and its
   replica count.
2. Train step: `SupConModel` (CIFAR "resnet50" encoder from
   `supcon_tf.encoders` at 32x32x3, `ProjectionHead` 2048 -> 2048 -> 128,
   tau 0.1, SGD momentum 0.9), two views per sample, trained with
   `SupConModel.fit` on a repeated `tf.data` dataset of one random batch
   (so the input pipeline costs nothing), in three configurations: float32,
   mixed_float16 (with a `LossScaleOptimizer`), mixed_float16 + XLA
   (`compile(jit_compile=True)`); on a TPU the half type is bfloat16 instead
   (mixed_bfloat16, no loss scaling). The first configurations are compiled
   with `jit_compile=False` explicitly: Keras' default "auto" would turn XLA
   on whenever a GPU is present. Each configuration runs at the largest
   global batch that fits, trying `--max_batch` (1024) first and halving on
   out-of-memory. Units: **samples/s** = samples (images) per second, each
   sample seen as 2 views, so **views/s = 2 x samples/s** (the encoder
   processes views/s images per second); step time in ms. Timing: `warm-up`
   steps first (tracing, XLA compilation, autotuning), then a fixed number of
   timed steps between two device syncs (a weight is fetched to the host,
   which waits for every queued kernel; Keras fetches the loss after every
   step anyway).
3. Loss alone: `supcon_tf.losses.supcon_loss(..., implementation="dense" /
   "blockwise")`, forward + backward (gradient w.r.t. the features) inside a
   `tf.function`, at N = 8192, 32768 and 65536 contrast rows (N = batch x 2
   views, dim 128, float32, 10 classes). Time: median of the timed passes
   after one warm-up pass, in ms. Memory: `get_memory_info(device)['peak']`
   after `reset_memory_stats(device)`, in bytes (MiB in the table), for the
   timed passes and separately for the first pass. A form that does not fit
   is recorded as "OOM"; the dense rows always carry the size of their
   logit matrix, N x N x 4 bytes.
4. Mixed precision against float32: the same model weights and the same
   batch (128 samples x 2 views), loss and gradients of all trainable
   variables computed in float32 (TensorFloat-32 off: the exact reference)
   and in the half-precision policy (float16 loss scaled by 2**15 and
   unscaled, as `LossScaleOptimizer` does). Reported: absolute and relative
   difference of the loss, and the relative difference of the gradients,
   ||g_half - g_fp32||_2 / ||g_fp32||_2 per variable (its maximum over
   variables, and the same ratio over all gradients together). Also compared
   to the same reference: float32 on the images rounded to the half type
   (the sensitivity of the model itself: at random initialisation on noise
   images the embeddings are nearly collapsed and the gradient is
   ill-conditioned, so rounding the inputs alone moves it a lot), and, on a
   GPU with TensorFloat-32 on (TensorFlow's default), float32 with TF32.

5. Augmentation on the host or on the device (`--augment_on`): `SupConModel.fit`
   fed by the real training pipeline, `data.make_multiview_dataset` over
   random uint8 images held in memory (512 at 256x256x3; no JPEG decoding),
   SimCLR policy to 224x224, ImageNet ResNet-50 (`imagenet_resnet50`) +
   `ProjectionHead` 2048 -> 2048 -> 128, in the half-precision policy without
   XLA (XLA cannot compile the augmentation's image ops), largest batch from
   256 down that fits. Row "host": the pipeline augments on this machine's
   CPUs and hands float32 views to the model; row "device": it hands over
   uint8 images and per-batch view seeds, and the train step augments on
   the accelerator. Also measured: the pipeline alone (samples/s read
   without a model) and the bytes of one batch as handed over. On a TPU
   only the host row runs (a TPU compiles the step with XLA).

Every section runs in a worker process; this driver never imports
TensorFlow (it would hold the GPU memory or the TPU the worker needs). An
out-of-memory error inside the worker is caught, the Keras session cleared,
and the next smaller batch tried; if the worker dies (a hard out-of-memory
abort, a crash), a fresh worker resumes with the remaining work and the
batch below the one that killed it.

`--smoke` runs the same code at tiny sizes on the CPU (small CNN encoder at
16x16x3, batch 8, N = 64 and 128, 1 warm-up + 2 timed steps; section 5 from
20x20x3 sources) in well under a minute; on a CPU the allocator keeps no statistics, so memory is recorded as
null with the reason. Exit status: 0 when every section produced its
numbers (an "OOM" of the dense loss is a result, not a failure), 1 otherwise,
2 for bad flags.
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JSON_NAME = "accelerator_check.json"
MD_NAME = "accelerator_check.md"
SCHEMA = "supcon_tf.accelerator_check/1"

VIEWS = 2
LOSS_DIM = 128
TEMPERATURE = 0.1
NUM_CLASSES = 10
LOSS_IMPLEMENTATIONS = ("blockwise", "dense")  # blockwise first: a dense OOM cannot disturb it
FLOAT16_LOSS_SCALE = 2.0**15  # keras.optimizers.LossScaleOptimizer's initial scale
MIN_BATCH = 2
AUGMENT_MODES = ("host", "device")  # = supcon_tf.data.AUGMENT_ON (tests/test_accelerator_check.py checks it)
# The names supcon_tf.distribute.get_strategy accepts (STRATEGY_NAMES). Not
# imported: that module imports TensorFlow, which this driver must not do.
# tests/test_accelerator_check.py checks that the two lists agree.
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")

# Sizes of a full (accelerator) run and of a --smoke run (CPU, seconds).
SIZES = {
    "full": {
        "encoder": "resnet50",
        "encoder_kwargs": {},
        "image_shape": [32, 32, 3],
        "head_hidden": [2048],
        "embedding_dim": 128,
        "warmup_steps": 3,
        "timed_steps": 10,
        "loss_rows": [8192, 32768, 65536],
        "loss_repeats": 3,
        "compare_batch": 128,
        "batch_cap": None,
        # Section 5: the train step fed by the training pipeline, ImageNet-sized.
        "augment": {
            "encoder": "imagenet_resnet50",
            "encoder_kwargs": {},
            "image_shape": [224, 224, 3],
            "source_shape": [256, 256, 3],
            "source_images": 512,
            "head_hidden": [2048],
            "embedding_dim": 128,
            "max_batch": 256,
        },
    },
    "smoke": {
        "encoder": "small_cnn",
        "encoder_kwargs": {"width": 0.25},
        "image_shape": [16, 16, 3],
        "head_hidden": [64],
        "embedding_dim": 128,
        "warmup_steps": 1,
        "timed_steps": 2,
        "loss_rows": [64, 128],
        "loss_repeats": 1,
        "compare_batch": 8,
        "batch_cap": 8,
        "augment": {
            "encoder": "small_cnn",
            "encoder_kwargs": {"width": 0.25},
            "image_shape": [16, 16, 3],
            "source_shape": [20, 20, 3],
            "source_images": 32,
            "head_hidden": [64],
            "embedding_dim": 128,
            "max_batch": 8,
        },
    },
}

OK, OOM, ERROR, CRASHED, TIMED_OUT = "ok", "OOM", "error", "crashed", "timed out"


# ---------------------------------------------------------------------------
# Flags.


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits with status 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _parser():
    parser = _Parser(
        prog="accelerator_check.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out_dir", default=os.path.join("benchmarks", "results"),
                        help="Folder for accelerator_check.json and .md (created if missing).")
    parser.add_argument("--strategy", default="default", choices=STRATEGIES,
                        help="supcon_tf.distribute.get_strategy name for the train step (default: %(default)s).")
    parser.add_argument("--tpu", default=None, help="TPU name for --strategy tpu ('local' on a TPU VM).")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes on the CPU: checks the script, not the device.")
    parser.add_argument("--max_batch", type=int, default=1024,
                        help="Largest global batch (samples) tried for the train step; halved on OOM (default: %(default)s).")
    parser.add_argument("--timeout_s", type=float, default=1800.0,
                        help="Give up (and still write both files) after this many seconds (default: %(default)s).")
    # Internal: run as the worker process with the plan in this JSON file.
    parser.add_argument("--worker_plan", default=None, help=argparse.SUPPRESS)
    # Testing only: FAULT@CONFIG:BATCH, FAULT "oom" (raised, recovered in the
    # worker) or "crash" (the worker process dies); comma-separated.
    parser.add_argument("--inject_faults", default="", help=argparse.SUPPRESS)
    return parser


def _parse_faults(parser, text):
    faults = {}
    for item in filter(None, text.split(",")):
        match = re.fullmatch(r"(oom|crash)@([A-Za-z0-9_]+):(\d+)", item.strip())
        if not match:
            parser.error(f"--inject_faults entries must look like oom@CONFIG:BATCH or crash@CONFIG:BATCH, received: {item!r}")
        faults[f"{match.group(2)}:{match.group(3)}"] = match.group(1)
    return faults


def parse_args(argv):
    """Parses and validates the flags; a bad value exits with status 2 and one line naming the flag."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker_plan is not None:
        return args
    if args.max_batch < MIN_BATCH:
        parser.error(f"--max_batch must be an int >= {MIN_BATCH} (samples per global batch), received: {args.max_batch}")
    if not (args.timeout_s > 0 and math.isfinite(args.timeout_s)):
        parser.error(f"--timeout_s must be a positive number of seconds, received: {args.timeout_s}")
    if args.strategy == "tpu" and not args.tpu:
        parser.error("--tpu must name the TPU with --strategy tpu ('local' on a TPU VM), received: --tpu unset")
    if args.tpu is not None and args.strategy != "tpu":
        parser.error(f"--tpu only applies to --strategy tpu, received: --tpu={args.tpu!r} with --strategy={args.strategy}")
    if not args.out_dir:
        parser.error("--out_dir must be a folder path, received: an empty string")
    if os.path.exists(args.out_dir) and not os.path.isdir(args.out_dir):
        parser.error(f"--out_dir must be a folder, received: --out_dir={args.out_dir!r}, an existing file")
    try:
        os.makedirs(args.out_dir, exist_ok=True)
    except OSError as error:
        parser.error(f"--out_dir cannot be created, received: --out_dir={args.out_dir!r} ({error.strerror})")
    args.faults = _parse_faults(parser, args.inject_faults)
    return args


# ---------------------------------------------------------------------------
# The plan: every measurement is a task the worker runs.


def precision_configs(strategy):
    """`(name, Keras dtype policy, jit_compile)` of the three train-step configurations."""
    half = "mixed_bfloat16" if strategy == "tpu" else "mixed_float16"  # TPUs compute in bfloat16, not float16
    return [("float32", "float32", False), (half, half, False), (f"{half}_xla", half, True)]


def batch_ladder(max_batch):
    """`[max_batch, max_batch // 2, ...]` down to MIN_BATCH: the batches tried, largest first."""
    batches = []
    while max_batch >= MIN_BATCH:
        batches.append(max_batch)
        max_batch //= 2
    return batches


def plan_tasks(args, sizes):
    max_batch = min(args.max_batch, sizes["batch_cap"] or args.max_batch)  # --smoke caps the batch
    tasks = [{"id": "facts", "kind": "facts"}]
    for rows in sizes["loss_rows"]:
        for implementation in LOSS_IMPLEMENTATIONS:
            tasks.append({"id": f"loss/{rows}/{implementation}", "kind": "loss", "rows": rows,
                          "implementation": implementation})
    configs = precision_configs(args.strategy)
    tasks.append({"id": "compare", "kind": "compare", "half_policy": configs[1][1]})
    for name, policy, jit_compile in configs:
        tasks.append({"id": f"step/{name}", "kind": "step", "config": name, "policy": policy,
                      "jit_compile": jit_compile, "batches": batch_ladder(max_batch)})
    # Host against device augmentation, in the half-precision policy without XLA (which cannot compile the
    # augmentation); a TPU cannot run device augmentation (it compiles everything with XLA): host row only.
    augment_batch = min(max_batch, sizes["augment"]["max_batch"])
    for mode in ("host",) if args.strategy == "tpu" else AUGMENT_MODES:
        tasks.append({"id": f"augment/{mode}", "kind": "augment", "config": f"augment_{mode}", "augment_on": mode,
                      "policy": configs[1][1], "jit_compile": False, "batches": batch_ladder(augment_batch)})
    return tasks


# ---------------------------------------------------------------------------
# Driver: runs workers until every task has a result.


def _read_events(path):
    events = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:  # a line cut short by a dying worker
                    pass
    return events


def _tail(path, chars=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def looks_like_oom(text):
    """True for the messages TensorFlow, XLA and CUDA give when device memory runs out."""
    return bool(re.search(r"out of memory|resource[_ ]exhausted|\bOOM\b|failed to allocate", text, re.IGNORECASE))


def _launch_worker(args, sizes, tasks, folder, index, timeout):
    plan = {"strategy": args.strategy, "tpu": args.tpu, "sizes": sizes, "tasks": tasks, "faults": args.faults,
            "events_path": os.path.join(folder, f"events_{index}.jsonl")}
    plan_path = os.path.join(folder, f"plan_{index}.json")
    with open(plan_path, "w") as f:
        json.dump(plan, f)
    stderr_path = os.path.join(folder, f"stderr_{index}.txt")
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --smoke is a CPU run, also on a GPU machine
    command = [sys.executable, os.path.abspath(__file__), "--worker_plan", plan_path]
    timed_out = False
    with open(stderr_path, "w") as stderr:
        try:
            returncode = subprocess.run(command, stderr=stderr, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            returncode, timed_out = None, True
    return _read_events(plan["events_path"]), returncode, _tail(stderr_path), timed_out


def run_tasks(args, sizes, tasks):
    """Runs `tasks` in worker processes; returns `{task id: result}` (each result has a "status")."""
    results, attempts = {}, {t["id"]: [] for t in tasks}
    pending = [dict(t) for t in tasks]
    deadline = time.monotonic() + args.timeout_s
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as folder:
        for index in range(len(tasks) + sum(len(t.get("batches", ())) for t in tasks) + 1):
            if not pending:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            events, returncode, stderr_tail, timed_out = _launch_worker(args, sizes, pending, folder, index, remaining)
            running, last_batch = None, {}
            for event in events:
                task_id = event.get("task")
                if event["event"] == "fatal":
                    for task in pending:
                        results.setdefault(task["id"], {"status": ERROR, "error": event["error"]})
                    pending = []
                    break
                if event["event"] == "start":
                    running = task_id
                elif event["event"] == "attempt":
                    last_batch[task_id] = event["batch"]
                elif event["event"] == "oom":  # recovered inside the worker
                    attempts[task_id].append({"batch": event["batch"], "status": OOM, "error": event["error"]})
                elif event["event"] == "done":
                    results[task_id] = event["result"]
                    running = None
            pending = [t for t in pending if t["id"] not in results]
            if not pending:
                break
            if returncode == 0:  # cannot happen unless the worker is broken: do not loop on it
                for task in pending:
                    results[task["id"]] = {"status": ERROR, "error": "the worker exited without a result"}
                break
            ended = f"--timeout_s={args.timeout_s:g} reached" if timed_out else f"worker exited with {returncode}"
            if running is None:  # died before or between tasks: nothing to blame, nothing to retry
                for task in pending:
                    results[task["id"]] = {"status": TIMED_OUT if timed_out else ERROR,
                                           "error": f"{ended}: {stderr_tail[-600:]}"}
                pending = []
                break
            status = TIMED_OUT if timed_out else (OOM if looks_like_oom(stderr_tail) else CRASHED)
            detail = f"{ended}: {stderr_tail[-600:]}"
            task = next(t for t in pending if t["id"] == running)
            if "batches" in task and running in last_batch:
                batch = last_batch[running]
                attempts[running].append({"batch": batch, "status": status, "error": detail})
                # Out of memory: resume the ladder below the batch that killed the worker. Anything else
                # would most likely fail again at every smaller batch: stop there.
                task["batches"] = [b for b in task["batches"] if b < batch] if status == OOM else []
                if not task["batches"]:
                    results[running] = {"status": status, "error": f"last attempt (batch {batch}): {detail}"}
            else:
                results[running] = {"status": status, "error": detail}
            pending = [t for t in pending if t["id"] not in results]
    for task in tasks:
        results.setdefault(task["id"], {"status": TIMED_OUT, "error": f"not run within --timeout_s={args.timeout_s}"})
        if "batches" in task:  # the train-step sections: the batches tried
            result = results[task["id"]]
            tried = attempts[task["id"]] + ([{"batch": result["batch"], "status": OK}] if result["status"] == OK else [])
            result["attempts"] = tried
    return results


# ---------------------------------------------------------------------------
# Report: JSON and Markdown, written atomically.


def _write_atomically(path, text):
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        with os.fdopen(descriptor, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def _clean(value):
    """JSON-safe copy: non-finite floats become None (strict JSON has no NaN/Infinity)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def build_report(args, argv, sizes, tasks, results, started, wall_s):
    steps = [dict(results[t["id"]], config=t["config"], policy=t["policy"], jit_compile=t["jit_compile"])
             for t in tasks if t["kind"] == "step"]
    loss_rows = [dict(results[t["id"]], rows=t["rows"], batch=t["rows"] // VIEWS, implementation=t["implementation"])
                 for t in tasks if t["kind"] == "loss"]
    augment_rows = [dict(results[t["id"]], config=t["config"], augment_on=t["augment_on"], policy=t["policy"],
                         jit_compile=t["jit_compile"]) for t in tasks if t["kind"] == "augment"]
    for row in loss_rows:
        if row["implementation"] == "dense":
            row["dense_logits_bytes"] = row["rows"] * row["rows"] * 4
    return _clean({
        "schema": SCHEMA,
        "command": "python benchmarks/accelerator_check.py " + shlex.join(argv),
        "python_executable": sys.executable,
        "mode": "smoke" if args.smoke else "full",
        "started_utc": started,
        "wall_s": wall_s,
        "settings": {"strategy": args.strategy, "tpu": args.tpu, "max_batch": args.max_batch,
                     "batches_tried": batch_ladder(min(args.max_batch, sizes["batch_cap"] or args.max_batch)),
                     "views": VIEWS,
                     "temperature": TEMPERATURE, "num_classes": NUM_CLASSES, "loss_dim": LOSS_DIM, **sizes},
        "units": {"samples_per_s": "samples (images) per second; each sample is seen as 2 views",
                  "views_per_s": "views (encoder images) per second = 2 x samples_per_s",
                  "step_ms": "milliseconds per optimizer step (mean over the timed steps)",
                  "time_ms": "milliseconds per forward + backward pass (median)",
                  "input_samples_per_s": "samples per second of the training pipeline alone (no model)",
                  "input_bytes_per_batch": "bytes of one batch as the pipeline hands it to the model: float32 views "
                                           "(host) or uint8 images and int64 view seeds (device)",
                  "bytes": "peak device memory from tf.config.experimental.get_memory_info(device)['peak']"},
        "facts": results["facts"],
        "train_step": steps,
        "augmentation": augment_rows,
        "loss": loss_rows,
        "mixed_vs_float32": results["compare"],
    })


def _mib(value):
    if value is None:
        return "-"
    mib = value / 2**20
    return f"{mib:,.0f}" if mib >= 10 else f"{mib:.3g}"


def _num(value, fmt="{:,.1f}"):
    return "-" if value is None else fmt.format(value)


def _sci(value):
    return "-" if value is None else f"{value:.2e}"


def _tried(row):
    """A row's "batches tried" cell: each attempted batch with its status, or "-"."""
    return ", ".join(f"{a['batch']} {a['status']}" for a in row.get("attempts", [])) or "-"


def _status(row):
    if row["status"] == OK:
        return OK
    return f"{row['status']}: {str(row.get('error', ''))[:80]}".replace("|", "/").replace("\n", " ")


def render_markdown(report):
    facts = report["facts"]
    lines = [
        "# Accelerator check (`benchmarks/accelerator_check.py`)",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Run {report['started_utc']}, {report['mode']} mode, {report['wall_s']:.0f} s wall time.",
        "",
        "## Device",
        "",
    ]
    if facts.get("status") == OK:
        devices = ", ".join(f"{d['name']} ({d['device_type']})" for d in facts["physical_devices"])
        details = "; ".join(f"{k}: {json.dumps(v)}" for k, v in facts["device_details"].items()) or "none"
        build = facts["build_info"]
        lines += [
            f"- TensorFlow {facts['tensorflow']}, Keras {facts['keras']}, Python {facts['python']}, {facts['platform']}",
            f"- build: CUDA {build.get('cuda_version', '-')}, cuDNN {build.get('cudnn_version', '-')}, "
            f"is_cuda_build {build.get('is_cuda_build', '-')}",
            f"- physical devices: {devices}",
            f"- device details: {details}",
            f"- nvidia-smi: {facts['nvidia_smi'] or 'not available'}",
            f"- host CPUs: {facts['cpu_count']} ({facts['cpus_usable']} usable); "
            f"TensorFloat-32 enabled: {facts['tensor_float_32']}",
            f"- strategy: {facts['strategy']} ({facts['strategy_class']}), {facts['num_replicas']} replica(s); "
            f"loss and precision sections on {facts['compute_device']}",
        ]
    else:
        lines.append(f"- facts not collected: {_status(facts)}")
    settings = report["settings"]
    lines += [
        "",
        f"## Train step: SupConModel.fit, encoder {settings['encoder']} at {'x'.join(map(str, settings['image_shape']))}, "
        f"head {settings['head_hidden']} -> {settings['embedding_dim']}, 2 views",
        "",
        f"samples/s = images per second, each seen as 2 views; views/s = 2 x samples/s. "
        f"{settings['warmup_steps']} warm-up step(s), then {settings['timed_steps']} timed steps.",
        "",
        "| configuration | batch | samples/s | views/s | step (ms) | peak memory (MiB) | XLA | batches tried |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["train_step"]:
        tried = _tried(row)
        if row["status"] == OK:
            lines.append(
                f"| {row['config']} | {row['batch']} | {_num(row['samples_per_s'])} | {_num(row['views_per_s'])} | "
                f"{_num(row['step_ms'])} | {_mib(row['peak_memory_bytes'])} | {row['jit_compile_effective']} | {tried} |"
            )
        else:
            lines.append(f"| {row['config']} | - | - | - | - | - | {row['jit_compile']} | {tried}; {_status(row)} |")
    augment = settings["augment"]
    half = report["augmentation"][0]["policy"] if report["augmentation"] else "-"
    lines += [
        "",
        f"## Augmentation on the host or on the device: SupConModel.fit on the training pipeline, encoder "
        f"{augment['encoder']} at {'x'.join(map(str, augment['image_shape']))}",
        "",
        f"`data.make_multiview_dataset` over {augment['source_images']}+ random uint8 images of "
        f"{'x'.join(map(str, augment['source_shape']))} held in memory (no decoding), SimCLR policy to "
        f"{'x'.join(map(str, augment['image_shape'][:2]))}, 2 views, {half}, no XLA (it cannot compile the "
        "augmentation). host: the tf.data pipeline augments on this host's CPUs and hands over float32 views; "
        "device: it hands over uint8 images and view seeds, and the train step augments (`--augment_on device`). "
        "Input alone: the pipeline read without a model (after the warm-up batches; its prefetch buffer may hold a "
        "few ready batches, and so may the train step's first timed steps).",
        "",
        "| augment_on | batch | samples/s | views/s | step (ms) | input alone (samples/s) | MiB per batch handed over "
        "| peak memory (MiB) | batches tried |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["augmentation"]:
        tried = _tried(row)
        if row["status"] == OK:
            lines.append(
                f"| {row['augment_on']} | {row['batch']} | {_num(row['samples_per_s'])} | {_num(row['views_per_s'])} | "
                f"{_num(row['step_ms'])} | {_num(row['input_samples_per_s'])} | {_mib(row['input_bytes_per_batch'])} | "
                f"{_mib(row['peak_memory_bytes'])} | {tried} |"
            )
        else:
            lines.append(f"| {row['augment_on']} | - | - | - | - | - | - | - | {tried}; {_status(row)} |")
    if settings["strategy"] == "tpu":
        lines += ["", "No device row: a TPU compiles the train step with XLA, which cannot compile the augmentation."]
    lines += [
        "",
        f"## Loss forward + backward (dim {LOSS_DIM}, 2 views, float32, {NUM_CLASSES} classes)",
        "",
        "| N (contrast rows) | batch | implementation | status | time (ms) | peak memory (MiB) | "
        "first pass peak (MiB) | dense logits N*N*4 (MiB) | loss |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["loss"]:
        lines.append(
            f"| {row['rows']} | {row['batch']} | {row['implementation']} | {_status(row)} | "
            f"{_num(row.get('time_ms'), '{:,.2f}')} | {_mib(row.get('peak_memory_bytes'))} | "
            f"{_mib(row.get('peak_memory_first_pass_bytes'))} | {_mib(row.get('dense_logits_bytes'))} | "
            f"{_num(row.get('loss'), '{:.6f}')} |"
        )
    compare = report["mixed_vs_float32"]
    lines += ["", "## Mixed precision against float32 (same weights, same batch)", ""]
    if compare["status"] == OK:
        lines += [
            "| compared | loss | reference loss | abs. loss diff | rel. loss diff | max rel. gradient diff (variable) "
            "| rel. diff of all gradients |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in compare["rows"]:
            lines.append(
                f"| {row['name']} vs float32 | {_num(row['loss'], '{:.6f}')} | "
                f"{_num(compare['reference_loss'], '{:.6f}')} | {_sci(row['loss_abs_diff'])} | "
                f"{_sci(row['loss_rel_diff'])} | {_sci(row['grad_max_rel_diff'])} "
                f"({row['grad_max_rel_diff_variable']}) | {_sci(row['grad_global_rel_diff'])} |"
            )
        lines += ["", f"Batch {compare['batch']} samples x 2 views; {compare['note']}"]
    else:
        lines.append(f"Not measured: {_status(compare)}")
    notes = [facts.get("memory_note")] if facts.get("memory_note") else []
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def run_checks(args, argv):
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    start = time.perf_counter()
    sizes = SIZES["smoke" if args.smoke else "full"]
    tasks = plan_tasks(args, sizes)
    results = run_tasks(args, sizes, tasks)
    report = build_report(args, argv, sizes, tasks, results, started, time.perf_counter() - start)
    json_path, md_path = os.path.join(args.out_dir, JSON_NAME), os.path.join(args.out_dir, MD_NAME)
    _write_atomically(json_path, json.dumps(report, indent=1, allow_nan=False) + "\n")
    _write_atomically(md_path, render_markdown(report))
    # An OOM is a result for a loss row (the dense form is expected not to fit at some N), a failure elsewhere.
    failed = [t["id"] for t in tasks
              if results[t["id"]]["status"] != OK and not (t["kind"] == "loss" and results[t["id"]]["status"] == OOM)]
    print(f"[accelerator_check] wrote {json_path} and {md_path} in {report['wall_s']:.0f} s", flush=True)
    if failed:
        print(f"[accelerator_check] sections without numbers: {', '.join(failed)}", file=sys.stderr, flush=True)
    return 1 if failed else 0


# ---------------------------------------------------------------------------
# Worker: the measurements (TensorFlow is imported only from here on).


class _Events:
    """Append-only JSON-lines log the driver reads back; every line is flushed to disk at once."""

    def __init__(self, path):
        self._file = open(path, "a")  # noqa: SIM115 - lives as long as the worker

    def write(self, **event):
        self._file.write(json.dumps(_clean(event)) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())


def _say(message):
    print(f"[accelerator_check] {message}", flush=True)


def _short(error):
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= 400 else text[:200] + " ... " + text[-200:]


def _is_oom_error(error):
    import tensorflow as tf

    return isinstance(error, tf.errors.ResourceExhaustedError) or looks_like_oom(str(error))


class _DeviceMemory:
    """Peak allocator memory of one device, or None with the reason it is not available."""

    def __init__(self, device):
        self.device = device
        self.note = None
        if device.upper().startswith("CPU"):
            self.note = (f"memory not measured on {device}: TensorFlow keeps no allocator statistics for the host "
                         "(get_memory_info returns zeros)")

    def reset(self):
        import tensorflow as tf

        if self.note is None:
            try:
                tf.config.experimental.reset_memory_stats(self.device)
            except Exception as error:  # noqa: BLE001 - a device without statistics is a result, not a failure
                self.note = f"reset_memory_stats({self.device!r}) failed: {_short(error)}"

    def peak(self):
        import tensorflow as tf

        if self.note is not None:
            return None
        try:
            return int(tf.config.experimental.get_memory_info(self.device)["peak"])
        except Exception as error:  # noqa: BLE001
            self.note = f"get_memory_info({self.device!r}) failed: {_short(error)}"
            return None


def _compute_device():
    """The device of the single-device sections: first GPU, else first TPU core, else the CPU."""
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        logical = tf.config.list_logical_devices(kind)
        if logical:
            return f"{kind}:0"
    return "CPU:0"


def _synthetic_views(batch, image_shape, seed):
    """A random batch `([batch, 2, H, W, C] float32 in [0, 1), [batch] int32 labels)`."""
    import numpy as np

    rng = np.random.default_rng(seed)
    views = rng.random((batch, VIEWS, *image_shape), dtype=np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32)
    return views, labels


def _build_model(sizes, policy):
    """SupConModel (encoder + ProjectionHead) with every layer created under the dtype `policy`."""
    import keras

    from supcon_tf import encoders, layers, losses, models

    keras.mixed_precision.set_global_policy(policy)
    encoder = encoders.build_encoder(sizes["encoder"], tuple(sizes["image_shape"]), **sizes["encoder_kwargs"])
    head = layers.ProjectionHead(tuple(sizes["head_hidden"]), sizes["embedding_dim"])
    return models.SupConModel(encoder, head, loss_config=losses.LossConfig(temperature=TEMPERATURE))


def _release():
    """Drops Keras' global state and collects garbage, so a failed or finished model's memory is reusable."""
    import gc

    import keras

    keras.backend.clear_session(free_memory=True)
    keras.mixed_precision.set_global_policy("float32")
    gc.collect()


def measure_facts(task, ctx):
    """Section 1: versions, build, devices, strategy."""
    import keras
    import tensorflow as tf

    physical = tf.config.list_physical_devices()
    details = {}
    for device in physical:
        if device.device_type in ("GPU", "TPU"):
            try:
                info = tf.config.experimental.get_device_details(device)
                details[device.name] = {k: list(v) if isinstance(v, tuple) else v for k, v in info.items()}
            except Exception as error:  # noqa: BLE001
                details[device.name] = {"error": _short(error)}
    nvidia_smi = None
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]
        try:
            nvidia_smi = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
        except (OSError, subprocess.SubprocessError) as error:
            nvidia_smi = f"failed: {error}"
    memory = _DeviceMemory(ctx["device"])
    memory.peak()
    return {
        "status": OK,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "build_info": {k: str(v) for k, v in tf.sysconfig.get_build_info().items()},
        "physical_devices": [{"name": d.name, "device_type": d.device_type} for d in physical],
        "logical_devices": [d.name for d in tf.config.list_logical_devices()],
        "device_details": details,
        "nvidia_smi": nvidia_smi,
        "tensor_float_32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "strategy": ctx["plan"]["strategy"],
        "strategy_class": type(ctx["strategy"]).__name__,
        "num_replicas": int(ctx["strategy"].num_replicas_in_sync),
        "compute_device": ctx["device"],
        "memory_note": memory.note,
        "env": {k: os.environ.get(k) for k in ("TF_ENABLE_ONEDNN_OPTS", "XLA_FLAGS", "TF_XLA_FLAGS",
                                               "CUDA_VISIBLE_DEVICES", "TF_GPU_ALLOCATOR")},
    }


def measure_loss(task, ctx):
    """Section 3: one loss implementation at N contrast rows, forward + backward; time and peak memory."""
    import numpy as np
    import tensorflow as tf

    from supcon_tf.losses import supcon_loss

    rows, implementation, repeats = task["rows"], task["implementation"], ctx["sizes"]["loss_repeats"]
    rng = np.random.default_rng(0)
    features = rng.standard_normal((rows // VIEWS, VIEWS, LOSS_DIM)).astype(np.float32)
    features /= np.linalg.norm(features, axis=-1, keepdims=True)
    labels = rng.integers(0, NUM_CLASSES, size=rows // VIEWS).astype(np.int32)
    memory = _DeviceMemory(ctx["device"])

    @tf.function(jit_compile=ctx["on_tpu"])  # TPUs only run compiled code
    def forward_backward(x, y):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = supcon_loss(x, y, temperature=TEMPERATURE, implementation=implementation)
        return loss, tf.norm(tape.gradient(loss, x))  # a scalar of the whole gradient: fetching it is the sync

    def one_pass():
        loss, grad_norm = forward_backward(x, y)
        return float(loss.numpy()), float(grad_norm.numpy())

    try:
        with tf.device(ctx["device"]):
            x, y = tf.constant(features), tf.constant(labels)
            memory.reset()
            start = time.perf_counter()
            one_pass()
            first_pass_s = time.perf_counter() - start
            peak_first = memory.peak()
            memory.reset()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                loss, grad_norm = one_pass()
                times.append(time.perf_counter() - start)
            peak = memory.peak()
    except Exception as error:  # noqa: BLE001
        if not _is_oom_error(error):
            raise
        _say(f"loss {implementation} N={rows}: OOM")
        return {"status": OOM, "error": _short(error), "memory_note": memory.note}
    finally:
        _release()
    time_ms = 1000 * float(np.median(times))
    _say(f"loss {implementation} N={rows}: {time_ms:.2f} ms, peak {_mib(peak)} MiB")
    return {"status": OK, "time_ms": time_ms, "times_ms": [1000 * t for t in times],
            "first_pass_ms": 1000 * first_pass_s, "peak_memory_bytes": peak,
            "peak_memory_first_pass_bytes": peak_first, "memory_note": memory.note,
            "loss": loss, "gradient_norm": grad_norm}


def _loss_and_gradients(model, views, labels, loss_scale, jit_compile):
    """SupCon loss of one batch (training mode) and the unscaled float32 gradients of every trainable variable."""
    import numpy as np
    import tensorflow as tf

    from supcon_tf.losses import supcon_loss

    @tf.function(jit_compile=jit_compile)
    def compute(scale):
        with tf.GradientTape() as tape:
            loss = supcon_loss(model.embed_views(views, training=True), labels, temperature=TEMPERATURE)
            scaled = loss * scale
        grads = tape.gradient(scaled, model.trainable_variables)
        return loss, [tf.cast(g, tf.float32) / scale for g in grads]

    for _ in range(8):  # as LossScaleOptimizer: halve the scale while the scaled gradients overflow
        loss, grads = compute(tf.constant(loss_scale, tf.float32))
        grads = [g.numpy() for g in grads]
        if all(np.isfinite(g).all() for g in grads) or loss_scale <= 1.0:
            break
        loss_scale /= 2
    return float(loss.numpy()), grads, loss_scale


def _compare_rows(name, reference, candidate, variables, loss_scale):
    import numpy as np

    ref_loss, ref_grads = reference
    loss, grads = candidate
    per_variable, squared_diff, squared_norm = [], 0.0, 0.0
    for variable, g_ref, g in zip(variables, ref_grads, grads):
        diff = float(np.linalg.norm((g - g_ref).astype(np.float64)))
        norm = float(np.linalg.norm(g_ref.astype(np.float64)))
        squared_diff, squared_norm = squared_diff + diff**2, squared_norm + norm**2
        if norm > 0:
            per_variable.append((diff / norm, variable.path))
    worst = max(per_variable) if per_variable else (float("nan"), None)
    return {
        "name": name,
        "loss": loss,
        "loss_abs_diff": abs(loss - ref_loss),
        "loss_rel_diff": abs(loss - ref_loss) / abs(ref_loss) if ref_loss else float("nan"),
        "grad_max_rel_diff": worst[0],
        "grad_max_rel_diff_variable": worst[1],
        "grad_global_rel_diff": math.sqrt(squared_diff / squared_norm) if squared_norm > 0 else float("nan"),
        "all_finite": bool(math.isfinite(loss) and all(np.isfinite(g).all() for g in grads)),
        "loss_scale": loss_scale,
    }


def measure_precision(task, ctx):
    """Section 4: half-precision policy (and TF32) against exact float32, same weights, same batch."""
    import keras
    import tensorflow as tf

    sizes, half = ctx["sizes"], task["half_policy"]
    views, labels = _synthetic_views(sizes["compare_batch"], sizes["image_shape"], seed=1)
    tf32_default = tf.config.experimental.tensor_float_32_execution_enabled()
    try:
        with tf.device(ctx["device"]):
            views, labels = tf.constant(views), tf.constant(labels)
            keras.utils.set_random_seed(0)
            reference_model = _build_model(sizes, "float32")
            weights = reference_model.get_weights()
            variables = reference_model.trainable_variables
            tf.config.experimental.enable_tensor_float_32_execution(False)
            ref_loss, ref_grads, _ = _loss_and_gradients(reference_model, views, labels, 1.0, ctx["on_tpu"])
            rows = []
            half_model = _build_model(sizes, half)
            half_model.set_weights(weights)
            half_scale = FLOAT16_LOSS_SCALE if half == "mixed_float16" else 1.0
            tf.config.experimental.enable_tensor_float_32_execution(tf32_default)
            half_loss, half_grads, used_scale = _loss_and_gradients(half_model, views, labels, half_scale, ctx["on_tpu"])
            rows.append(_compare_rows(half, (ref_loss, ref_grads), (half_loss, half_grads), variables, used_scale))
            # Conditioning reference: float32 compute on the images rounded to the half type (what the
            # half-precision model's first layer sees), TF32 off like the reference.
            tf.config.experimental.enable_tensor_float_32_execution(False)
            half_dtype = half.split("_")[1]
            rounded = tf.cast(tf.cast(views, half_dtype), tf.float32)
            rounded_loss, rounded_grads, _ = _loss_and_gradients(reference_model, rounded, labels, 1.0, ctx["on_tpu"])
            rows.append(_compare_rows(f"float32_{half_dtype}_inputs", (ref_loss, ref_grads),
                                      (rounded_loss, rounded_grads), variables, 1.0))
            tf.config.experimental.enable_tensor_float_32_execution(tf32_default)
            if tf32_default and ctx["device"].startswith("GPU"):
                tf32_model = _build_model(sizes, "float32")
                tf32_model.set_weights(weights)
                tf32_loss, tf32_grads, _ = _loss_and_gradients(tf32_model, views, labels, 1.0, ctx["on_tpu"])
                rows.append(_compare_rows("float32_tf32", (ref_loss, ref_grads), (tf32_loss, tf32_grads), variables, 1.0))
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(tf32_default)
        _release()
    for row in rows:
        _say(f"{row['name']} vs float32: loss rel. diff {row['loss_rel_diff']:.2e}, "
             f"max gradient rel. diff {row['grad_max_rel_diff']:.2e}")
    note = ("reference: float32 with TensorFloat-32 off; gradient differences are ||g - g_fp32|| / ||g_fp32|| "
            "per variable (max shown) and over all variables; BatchNormalization in training mode (batch statistics); "
            f"{half} loss scale {rows[0]['loss_scale']:g} (gradients unscaled before comparing). "
            f"float32_{half_dtype}_inputs is float32 compute on the images rounded to {half_dtype} (what the "
            f"{half} model's first layer sees): a gradient difference of the same size there comes from how "
            "sensitive this randomly initialised model on noise images is, not from half-precision arithmetic.")
    if not (tf32_default and ctx["device"].startswith("GPU")):
        note += " The float32-with-TF32 row needs a GPU with TensorFloat-32 on."
    return {"status": OK, "batch": sizes["compare_batch"], "reference_loss": ref_loss, "rows": rows, "note": note}


def _step_clock(warmup_steps, total_steps, memory):
    """A Keras callback: wall time at the end of every step, device syncs at the warm-up end and the last step."""
    import keras

    class StepClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends, self.losses = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.losses.append(float(logs["loss"]))  # Keras has already fetched it to the host
            if len(self.losses) in (warmup_steps, total_steps):
                # Kernels run in order on the device: fetching a weight waits for this step's update.
                self.model.trainable_variables[0].numpy()
            self.ends.append(time.perf_counter())
            if len(self.ends) == warmup_steps:
                memory.reset()  # the peak of the timed steps only

    return StepClock()


def _timed_fit(ctx, task, batch, replicas, sizes, dataset, view_augmentation=None):
    """Builds SupConModel (`sizes`, under `task['policy']`) and times `fit` on `dataset`; raises on OOM.

    With `view_augmentation`, the model makes the views of the dataset's
    `(images, view_seeds)` batches in its train step (`set_view_augmentation`).
    """
    import keras
    import tensorflow as tf

    warmup, timed = ctx["sizes"]["warmup_steps"], ctx["sizes"]["timed_steps"]
    memory = _DeviceMemory(ctx["device"])
    keras.utils.set_random_seed(0)
    with ctx["strategy"].scope():
        model = _build_model(sizes, task["policy"])
        if view_augmentation is not None:
            model.set_view_augmentation(view_augmentation)
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        if task["policy"] == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        model.compile(optimizer=optimizer, jit_compile=task["jit_compile"])  # explicit: "auto" means XLA on GPUs
    fault = ctx["plan"]["faults"].get(f"{task['config']}:{batch}")
    if fault == "oom":
        raise tf.errors.ResourceExhaustedError(None, None, f"injected OOM at batch {batch} (--inject_faults)")
    if fault == "crash":
        print(f"injected crash at batch {batch}: out of memory (--inject_faults)", file=sys.stderr, flush=True)
        os._exit(134)
    clock = _step_clock(warmup, warmup + timed, memory)
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=warmup + timed, callbacks=[clock], shuffle=False, verbose=0)
    seconds = clock.ends[-1] - clock.ends[warmup - 1]
    result = {
        "status": OK,
        "batch": batch,
        "per_replica_batch": batch // replicas,
        "samples_per_s": batch * timed / seconds,
        "views_per_s": VIEWS * batch * timed / seconds,
        "step_ms": 1000 * seconds / timed,
        "timed_steps": timed,
        "warmup_steps": warmup,
        "warmup_s": clock.ends[warmup - 1] - start,
        "peak_memory_bytes": memory.peak(),
        "memory_note": memory.note,
        "final_loss": clock.losses[-1],
        "jit_compile_effective": bool(model.jit_compile),
        "loss_scale_optimizer": isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
    }
    _say(f"{task['id']} batch {batch}: {result['samples_per_s']:,.1f} samples/s "
         f"({result['views_per_s']:,.1f} views/s), {result['step_ms']:.1f} ms/step")
    del model, clock
    return result


def _fit_once(ctx, task, batch, replicas):
    """Section 2 at `batch`: `SupConModel.fit` on one in-memory batch of views (no input cost); raises on OOM."""
    import tensorflow as tf

    views, labels = _synthetic_views(batch, ctx["sizes"]["image_shape"], seed=0)
    dataset = tf.data.Dataset.from_tensors((views, labels)).repeat().prefetch(tf.data.AUTOTUNE)
    try:
        return _timed_fit(ctx, task, batch, replicas, ctx["sizes"], dataset)
    finally:
        del dataset
        _release()


def _input_rate(dataset, warmup, timed):
    """Batches per second of `dataset` alone (no model), over `timed` batches read after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(timed):
        next(iterator)
    return timed / (time.perf_counter() - start)


def _augment_fit_once(ctx, task, batch, replicas):
    """Section 5 at `batch`: `SupConModel.fit` on the real training pipeline, augmenting on the host or the device."""
    import numpy as np

    from supcon_tf import augment, data

    sizes, warmup, timed = ctx["sizes"]["augment"], ctx["sizes"]["warmup_steps"], ctx["sizes"]["timed_steps"]
    rng = np.random.default_rng(0)
    count = max(sizes["source_images"], 2 * batch)
    images = rng.integers(0, 256, (count, *sizes["source_shape"]), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, count).astype(np.int32)
    policy = augment.SimCLRAugment(tuple(sizes["image_shape"][:2]))
    dataset = data.make_multiview_dataset(
        data.from_arrays(images, labels), batch_size=batch, num_views=VIEWS, augment=policy, seed=0, repeat=True,
        augment_on=task["augment_on"],
    )
    try:
        input_batches_per_s = _input_rate(dataset, warmup, timed)
        result = _timed_fit(ctx, task, batch, replicas, sizes, dataset,
                            view_augmentation=policy if task["augment_on"] == "device" else None)
    finally:
        del dataset
        _release()
    height, width, channels = sizes["image_shape"]
    if task["augment_on"] == "host":  # float32 views
        batch_bytes = batch * VIEWS * height * width * channels * 4
    else:  # uint8 source images + int64 [batch, views, 2] seeds
        batch_bytes = batch * int(np.prod(sizes["source_shape"])) + batch * VIEWS * 2 * 8
    result.update(augment_on=task["augment_on"], input_samples_per_s=batch * input_batches_per_s,
                  input_bytes_per_batch=batch_bytes)
    return result


def _largest_batch(task, ctx, attempt):
    """`attempt(ctx, task, batch, replicas)` at the largest batch of `task['batches']` that fits (halving on OOM)."""
    replicas = int(ctx["strategy"].num_replicas_in_sync)
    for batch in task["batches"]:
        batch -= batch % replicas  # the global batch splits evenly over the replicas
        if batch < max(MIN_BATCH, replicas):
            continue
        ctx["events"].write(task=task["id"], event="attempt", batch=batch)
        oom = None
        try:
            return attempt(ctx, task, batch, replicas)
        except Exception as error:  # noqa: BLE001
            if not _is_oom_error(error):
                raise
            oom = _short(error)
        # Out of the except block: the traceback (and the model it holds) is gone, so memory can be freed.
        _release()
        _say(f"{task['id']} batch {batch}: OOM, halving")
        ctx["events"].write(task=task["id"], event="oom", batch=batch, error=oom)
    return {"status": OOM, "error": f"no batch of {task['batches']} fit ({replicas} replica(s))"}


def measure_step(task, ctx):
    """Section 2: the SupCon train step at the largest batch of `task['batches']` that fits."""
    return _largest_batch(task, ctx, _fit_once)


def measure_augment(task, ctx):
    """Section 5: the SupCon train step fed by the training pipeline, host or device augmentation."""
    return _largest_batch(task, ctx, _augment_fit_once)


MEASUREMENTS = {"facts": measure_facts, "loss": measure_loss, "compare": measure_precision, "step": measure_step,
                "augment": measure_augment}


def worker_main(plan_path):
    with open(plan_path) as f:
        plan = json.load(f)
    events = _Events(plan["events_path"])
    try:
        import tensorflow as tf

        from supcon_tf import distribute

        strategy = distribute.get_strategy(plan["strategy"], tpu=plan["tpu"])
        device = _compute_device()
    except Exception as error:  # noqa: BLE001 - reported to the driver, which writes it into both files
        events.write(task=None, event="fatal", error=f"strategy {plan['strategy']!r}: {_short(error)}")
        return 1
    ctx = {"plan": plan, "sizes": plan["sizes"], "strategy": strategy, "device": device, "events": events,
           "on_tpu": isinstance(strategy, tf.distribute.TPUStrategy)}
    for task in plan["tasks"]:
        events.write(task=task["id"], event="start")
        _say(f"{task['id']} ...")
        try:
            result = MEASUREMENTS[task["kind"]](task, ctx)
        except Exception as error:  # noqa: BLE001 - one failed section must not cost the others
            result = {"status": OOM if _is_oom_error(error) else ERROR, "error": _short(error)}
            _say(f"{task['id']}: {result['status']}: {result['error']}")
        events.write(task=task["id"], event="done", result=result)
    return 0


def main(argv):
    args = parse_args(argv)
    if args.worker_plan is not None:
        return worker_main(args.worker_plan)
    return run_checks(args, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
