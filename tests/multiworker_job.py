"""A small SupCon training job for the multi-process tests (run by tests/test_multiworker.py, not by pytest: each
worker as a script, the one-process run as `main(argv)` in the test's own process).

    python tests/multiworker_job.py --model_dir DIR [--index I --ports P0,P1] [--epochs E] ...

With `--ports`, sets TF_CONFIG for worker `--index` of a localhost cluster
and trains under MultiWorkerMirroredStrategy; without, trains in one process
on the same global batches. Writes into DIR:
  events_<task>.log       "start", then one "epoch_begin N" line per epoch started (N 0-based), then "done {history}"
  weights_<task>.npz      this process's final weights
  backup/<task>/          this worker's BackupAndRestore state
  ckpt/latest.keras       chief-only atomic checkpoint, every epoch
  export/encoder/         chief-only atomic SavedModel export of the encoder
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

GLOBAL_BATCH = 8
NUM_SAMPLES = 64


def parse_args(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--ports", default="")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps_per_epoch", type=int, default=4)
    parser.add_argument("--sleep_per_step", type=float, default=0.0)
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    if args.ports:
        workers = [f"127.0.0.1:{port}" for port in args.ports.split(",")]
        os.environ["TF_CONFIG"] = json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": args.index}}
        )
    import keras
    import numpy as np
    import tensorflow as tf

    from supcon_tf import checkpointing, distribute
    from supcon_tf.encoders import build_encoder
    from supcon_tf.layers import ProjectionHead
    from supcon_tf.losses import LossConfig
    from supcon_tf.models import SupConModel

    strategy = distribute.get_strategy("multi_worker" if args.ports else "default")
    task_type, task_index = checkpointing.task_type_and_index()
    task = f"{task_type}_{task_index}"
    os.makedirs(args.model_dir, exist_ok=True)
    events = open(os.path.join(args.model_dir, f"events_{task}.log"), "a", buffering=1)
    events.write("start\n")

    # The global seed must be set before the dataset is built: under
    # MultiWorkerMirroredStrategy the input pipeline is rewritten (sharded,
    # rebatched) and its shuffle seed re-derived from the global seed.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((NUM_SAMPLES, 2, 8, 8, 1)).astype(np.float32)
    y = (np.arange(NUM_SAMPLES) % 5).astype(np.int32)
    # Identical shuffle seed on every worker; DATA sharding splits each global batch.
    dataset = distribute.shard_by_data(
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(NUM_SAMPLES, seed=0, reshuffle_each_iteration=True)
        .repeat()
        .batch(GLOBAL_BATCH, drop_remainder=True)
    )

    with strategy.scope():
        keras.utils.set_random_seed(0)
        encoder = build_encoder("small_cnn", (8, 8, 1), width=0.25, synchronized_bn=True)
        model = SupConModel(encoder, ProjectionHead((16,), 8), loss_config=LossConfig(temperature=0.2))
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    np.savez(os.path.join(args.model_dir, f"initial_{task}.npz"), *model.get_weights())

    callbacks = [
        keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: events.write(f"epoch_begin {epoch}\n")),
        keras.callbacks.BackupAndRestore(
            checkpointing.worker_backup_dir(os.path.join(args.model_dir, "backup")),
            double_checkpoint=True,
            delete_checkpoint=False,
        ),
        checkpointing.ChiefModelCheckpoint(os.path.join(args.model_dir, "ckpt", "latest.keras")),
    ]
    if args.sleep_per_step:
        callbacks.append(
            keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: time.sleep(args.sleep_per_step))
        )
    history = model.fit(
        dataset, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, callbacks=callbacks, verbose=0
    )
    np.savez(os.path.join(args.model_dir, f"weights_{task}.npz"), *model.get_weights())
    if checkpointing.is_chief():
        with checkpointing.atomic_path(os.path.join(args.model_dir, "export", "encoder")) as temporary:
            model.encoder.export(temporary, format="tf_saved_model", verbose=False)
    events.write(f"done {json.dumps(history.history)}\n")
    events.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
