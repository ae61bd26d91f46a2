"""tf.distribute plumbing: strategy construction, cross-replica gathering of the contrast set, replica offsets.

SupCon needs the whole *global* batch as its contrast set. Under a
distribution strategy every replica embeds only its local views; the
helpers here gather the embeddings (and labels) of all replicas, in replica
order, so each replica can compute the exact loss of its own anchors against
the global contrast set. `ReplicaContext.all_gather` back-propagates
correctly: its gradient all-reduces the upstream gradient and slices out the
local rows, so gradients reach the replica that produced each embedding.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple

import tensorflow as tf

from supcon_tf import _checks as checks
from supcon_tf._keras_compat import is_multi_worker  # noqa: F401  (part of this module's API; private TF API inside)

STRATEGY_NAMES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
CLUSTERS = ("tf_config", "slurm", "auto")
# What srun sets in each task of a job step, and SlurmClusterResolver reads.
SLURM_STEP_VARIABLES = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE")


class GatheredBatch(NamedTuple):
    """The global contrast set as seen from one replica.

    Attributes:
      features: `[global_batch, ...]`, all replicas' rows in replica order.
      labels: `[global_batch, ...]` or None.
      offset: int32 scalar, index of this replica's first row in `features`.
      num_local: int32 scalar, this replica's number of rows.
    """

    features: tf.Tensor
    labels: tf.Tensor | None
    offset: tf.Tensor
    num_local: tf.Tensor


def num_replicas_in_sync():
    """Number of replicas of the current strategy (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def _replica_context(caller):
    context = tf.distribute.get_replica_context()
    if context is None:
        raise ValueError(
            f"`{caller}` must be called in a replica context (e.g. inside train_step or strategy.run), "
            "received: a call in the cross-replica context"
        )
    return context


def _placed(value):
    """`value`, placed on this replica's device if it has no placement yet.

    TensorFlow's collectives use a tensor's device as the destination of the
    gather/reduce. Under MultiWorkerMirroredStrategy with one device per
    worker, ops in the step function carry no device, and the collective
    fails with "destinations can not be empty"; pin such values to the
    worker's (single) device.
    """
    if not tf.is_tensor(value) or value.device or not tf.inside_function():
        return value
    devices = tf.distribute.get_strategy().extended.worker_devices
    if len(devices) != 1:
        return value
    with tf.device(devices[0]):
        return tf.identity(value)


def gather_global(features, labels=None):
    """Gathers all replicas' `features` (and `labels`) along axis 0, in replica order.

    With one replica this returns the inputs unchanged (no collective op).

    Args:
      features: `[local_batch, ...]` tensor, equal `local_batch` on every
        replica (use `drop_remainder=True`).
      labels: optional `[local_batch, ...]` tensor.

    Returns:
      `GatheredBatch(features [R * local_batch, ...], labels, offset, num_local)`
      where `offset = replica_id * local_batch`.

    Raises:
      ValueError: outside a replica context, or for a scalar `features`.
    """
    features = tf.convert_to_tensor(features)
    if features.shape.rank is not None and features.shape.rank < 1:
        raise ValueError(f"`features` must have a batch axis, received: features with shape {features.shape}")
    labels = None if labels is None else tf.convert_to_tensor(labels)
    context = _replica_context("gather_global")
    num_local = tf.shape(features)[0]
    if context.num_replicas_in_sync == 1:
        return GatheredBatch(features, labels, tf.constant(0, tf.int32), num_local)
    global_features = context.all_gather(_placed(features), axis=0)
    global_labels = None if labels is None else context.all_gather(_placed(labels), axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return GatheredBatch(global_features, global_labels, replica_id * num_local, num_local)


def all_reduce_sum(value):
    """Sum of `value` over all replicas (identity with one replica). Call in a replica context."""
    context = _replica_context("all_reduce_sum")
    if context.num_replicas_in_sync == 1:
        return tf.convert_to_tensor(value)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, _placed(tf.convert_to_tensor(value)))


def _gpus():
    return tf.config.list_logical_devices("GPU")


def in_slurm_step():
    """True in a task that srun started in a job step of two or more tasks (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`)."""
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
    return "SLURM_PROCID" in os.environ and tasks.isdigit() and int(tasks) >= 2


def _tf_config_resolver():
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            "`multi_worker` needs the TF_CONFIG environment variable (cluster and task), received: TF_CONFIG unset"
        )
    try:
        tf_config = json.loads(raw)
        tf_config["cluster"]["worker"]
        tf_config["task"]["type"], tf_config["task"]["index"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(
            f"TF_CONFIG must be JSON with cluster.worker and task.type/index, received: TF_CONFIG={raw!r}"
        ) from None
    return tf.distribute.cluster_resolver.TFConfigClusterResolver()


def _slurm_environment():
    return ", ".join(f"{name}={os.environ.get(name)!r}" for name in SLURM_STEP_VARIABLES)


def _slurm_resolver(port_base, gpus_per_task):
    """This task's cluster from the Slurm step's environment; TF_CONFIG set to the same cluster and task.

    `SlurmClusterResolver` gives the workers (the step's nodes, sorted, each
    with its tasks on ports `port_base`, `port_base + 1`, ...) and this
    task's index (`SLURM_PROCID`). The strategy gets them in a
    `SimpleClusterResolver` with `gpus_per_task` GPUs, because
    SlurmClusterResolver's own GPU count cannot describe a task without GPUs
    (it fails with "range() arg 3 must not be zero") and assigns GPUs by
    rewriting CUDA_VISIBLE_DEVICES, which Slurm's own binding
    (`--gpus-per-task`, `--gpus-per-node`) already did.
    """
    missing = [name for name in SLURM_STEP_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ValueError(
            "`cluster` 'slurm' needs the Slurm step environment that srun gives each task (start every task with "
            f"srun), received: {', '.join(missing)} unset"
        )
    visible = len(tf.config.list_physical_devices("GPU"))
    if gpus_per_task is None:
        gpus_per_task = visible
    elif gpus_per_task > visible:
        raise ValueError(
            f"`gpus_per_task` must be at most the {visible} GPUs this task sees, "
            f"received: gpus_per_task={gpus_per_task}"
        )
    try:
        # GPU numbers only to satisfy the resolver's arithmetic, one "GPU" per port (none is assigned: auto_set_gpu).
        slurm = tf.distribute.cluster_resolver.SlurmClusterResolver(
            port_base=port_base, gpus_per_node=65536, gpus_per_task=1, auto_set_gpu=False
        )
        spec = slurm.cluster_spec()
    except (RuntimeError, ValueError, AssertionError) as error:
        raise ValueError(
            f"the Slurm step environment does not describe this task's cluster ({error}), received: "
            f"{_slurm_environment()}"
        ) from None
    workers = spec.as_dict().get("worker", [])
    if slurm.task_type is None or any(int(address.rpartition(":")[2]) > 65535 for address in workers):
        raise ValueError(
            f"the Slurm step environment gives no task {os.environ['SLURM_PROCID']} with a port in [1, 65535] "
            f"(port base {port_base}), received: {_slurm_environment()}"
        )
    tf_config = {"cluster": spec.as_dict(), "task": {"type": slurm.task_type, "index": slurm.task_id}}
    raw = os.environ.get("TF_CONFIG")
    if raw:
        try:
            same = json.loads(raw) == tf_config
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                "`cluster` 'slurm' takes the cluster from the Slurm step, and TF_CONFIG names another one: unset "
                f"TF_CONFIG, or use cluster 'tf_config', received: TF_CONFIG={raw!r}"
            )
    # One identity for the whole process: the chief's writes, the per-worker backups and the run-folder lock read
    # TF_CONFIG (supcon_tf.checkpointing).
    os.environ["TF_CONFIG"] = json.dumps(tf_config)
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        spec, task_type=slurm.task_type, task_id=slurm.task_id, num_accelerators={"GPU": gpus_per_task},
        rpc_layer="grpc",
    )


def resolve_cluster(cluster="tf_config", *, port_base=8888, gpus_per_task=None):
    """The cluster of a multi-worker run, and this process's task in it, as a `ClusterResolver` for `get_strategy`.

    Args:
      cluster: one of `CLUSTERS`:
        - "tf_config": the `TF_CONFIG` environment variable (JSON with
          cluster.worker and task.type/index);
        - "slurm": the Slurm job step that `srun` started this task in
          (`SLURM_STEP_VARIABLES`), through
          `tf.distribute.cluster_resolver.SlurmClusterResolver`: the step's
          nodes in sorted order, a node's n-th task at port `port_base + n`,
          this task's index `SLURM_PROCID`. Also sets `TF_CONFIG` to that
          cluster and task (refused when TF_CONFIG names another), since
          every part of the process reads its identity there (which task is
          the chief, per-worker backups, the run folder's lock). Prints one
          line naming the task and the cluster;
        - "auto": "slurm" in a Slurm step of two or more tasks
          (`in_slurm_step`; the line says it was detected), else "tf_config".
      port_base: int in [1, 65535], "slurm" only.
      gpus_per_task: int >= 0, the number of this task's visible GPUs (the
        first ones) it trains on; None: all it sees. "slurm" only.

    Returns:
      A `tf.distribute.cluster_resolver.ClusterResolver`.

    Raises:
      ValueError: a bad argument; for "slurm", a process outside a Slurm step
        (a `SLURM_STEP_VARIABLES` variable unset), an environment that does
        not resolve, more GPUs than the task sees, or a TF_CONFIG naming
        another cluster; for "tf_config", TF_CONFIG unset or malformed.
    """
    if cluster not in CLUSTERS:
        raise ValueError(f"`cluster` must be one of {CLUSTERS}, received: cluster={cluster!r}")
    if not checks.is_int(port_base) or not 1 <= port_base <= 65535:
        raise ValueError(f"`port_base` must be an int in [1, 65535], received: port_base={port_base!r}")
    if gpus_per_task is not None:
        checks.non_negative_int(gpus_per_task, "gpus_per_task")
    detected = cluster == "auto" and in_slurm_step()
    if cluster == "tf_config" or (cluster == "auto" and not detected):
        return _tf_config_resolver()
    resolver = _slurm_resolver(port_base, gpus_per_task)
    workers = resolver.cluster_spec().as_dict()["worker"]
    print(
        f"{'Slurm step detected (--cluster=auto): ' if detected else ''}Slurm task {os.environ['SLURM_PROCID']} is "
        f"worker {resolver.task_id} of {len(workers)} at {workers[resolver.task_id]} "
        f"({resolver.num_accelerators()['GPU']} GPUs); workers: {', '.join(workers)}",
        flush=True,
    )
    return resolver


def get_strategy(name="default", *, device=None, devices=None, tpu=None, communication="auto", cluster_resolver=None):
    """Builds a `tf.distribute.Strategy` by name.

    Args:
      name: one of `STRATEGY_NAMES`:
        - "default": the current (default, no-op) strategy;
        - "one_device": `OneDeviceStrategy` on `device` (default: first GPU,
          else the CPU);
        - "mirrored": `MirroredStrategy` over `devices` (default: all GPUs,
          else all logical CPUs);
        - "multi_worker": `MultiWorkerMirroredStrategy` on the cluster of
          `cluster_resolver` (default: `resolve_cluster("tf_config")`, the
          `TF_CONFIG` environment variable); `communication` "auto" picks
          NCCL when this task trains on GPUs and RING otherwise;
        - "tpu": `TPUStrategy` on the TPU named by `tpu` ("" or "local" for a
          TPU VM), connecting and initialising the TPU system first.
      device: device string for "one_device".
      devices: list of device strings for "mirrored".
      tpu: TPU name or address for "tpu".
      communication: "auto", "ring" or "nccl" for "multi_worker".
      cluster_resolver: a `tf.distribute.cluster_resolver.ClusterResolver`
        from `resolve_cluster`, for "multi_worker" only.

    Returns:
      The strategy.

    Raises:
      ValueError: unknown name or communication, a `cluster_resolver`
        with another name or of another type, missing/invalid TF_CONFIG for
        "multi_worker" without a resolver, missing `tpu` for "tpu".
    """
    if name not in STRATEGY_NAMES:
        raise ValueError(f"`name` must be one of {STRATEGY_NAMES}, received: name={name!r}")
    if communication not in ("auto", "ring", "nccl"):
        raise ValueError(f"`communication` must be 'auto', 'ring' or 'nccl', received: communication={communication!r}")
    if cluster_resolver is not None:
        if name != "multi_worker":
            raise ValueError(
                f"`cluster_resolver` is for name='multi_worker', received: a cluster_resolver with name={name!r}"
            )
        if not isinstance(cluster_resolver, tf.distribute.cluster_resolver.ClusterResolver):
            raise ValueError(
                "`cluster_resolver` must be a tf.distribute.cluster_resolver.ClusterResolver (resolve_cluster), "
                f"received: cluster_resolver={cluster_resolver!r}"
            )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        if device is None:
            device = "/gpu:0" if _gpus() else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        if devices is None:
            gpus = _gpus()
            devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        if not devices:
            raise ValueError(f"`devices` must name at least one device, received: devices={devices!r}")
        cross_device_ops = None if _gpus() else tf.distribute.ReductionToOneDevice()
        return tf.distribute.MirroredStrategy(devices=devices, cross_device_ops=cross_device_ops)
    if name == "multi_worker":
        if cluster_resolver is None:
            cluster_resolver = _tf_config_resolver()
        if communication == "auto":
            if isinstance(cluster_resolver, tf.distribute.cluster_resolver.TFConfigClusterResolver):
                gpus = len(tf.config.list_physical_devices("GPU"))  # what the strategy uses with TF_CONFIG
            else:
                gpus = cluster_resolver.num_accelerators().get("GPU", 0)
            communication = "nccl" if gpus else "ring"
        implementation = {
            "ring": tf.distribute.experimental.CommunicationImplementation.RING,
            "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL,
        }[communication]
        options = tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        return tf.distribute.MultiWorkerMirroredStrategy(
            cluster_resolver=cluster_resolver, communication_options=options
        )
    # tpu
    if tpu is None:
        raise ValueError("`tpu` must name the TPU ('' or 'local' on a TPU VM), received: tpu=None")
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def shard_by_data(dataset):
    """Sets DATA auto-sharding on `dataset`: every worker reads the same stream and keeps its share of each batch.

    Use it with an identical shuffle seed on every worker, so the global
    batches of a multi-worker run are those of a one-process run.
    """
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"`dataset` must be a tf.data.Dataset, received: dataset={dataset!r}")
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def cross_replica_mean(local_sum, local_count):
    """A mean over all replicas' terms, as this replica's share and as the global value; call in a replica context.

    For a loss that is a mean over *all* replicas' terms (e.g. SupCon's mean
    over the anchors with a positive of the global batch), each replica holds
    the sum of its own terms and their count (or sum of weights). The global
    mean is `sum_r local_sum_r / sum_r local_count_r`, so this replica's share
    is its local sum divided by the GLOBAL count: the one and only
    `1 / num_replicas` scaling (global count = replicas x local count when
    the counts are equal), exact when they are not. The shares sum to the
    global mean over replicas, so the cross-replica *sum* of gradients that
    Keras 3 applies is the gradient of the global mean.

    Args:
      local_sum: float scalar, this replica's sum of terms (differentiable).
      local_count: float scalar, this replica's number (or total weight) of
        terms, same dtype.

    Returns:
      `(replica_share, global_mean)`: `replica_share` carries the gradient;
      `global_mean` (no gradient) is identical on every replica, for
      logging. Both are 0 when the global count is 0; with one replica both
      are `local_sum / local_count`.
    """
    global_count = all_reduce_sum(local_count)
    replica_share = tf.math.divide_no_nan(local_sum, global_count)
    return replica_share, all_reduce_sum(tf.stop_gradient(replica_share))
