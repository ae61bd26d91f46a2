r"""Small-batch SupCon on digits: a memory queue, a momentum encoder and P x K sampling against batches of 16 and 256.

Every arm pre-trains the same small CNN + projection head with SupCon for the
same number of optimizer steps (`--steps`, one cosine schedule), then trains
a linear probe on the frozen encoder (the `digits_linear` recipe, cached
features) and reports its top-1 on the held-out digits test split; each arm
runs once per seed, and the table gives mean +- std (sample std, ddof=1) over
seeds. The arms:

    b16_plain           batch 16, random batches
    b16_queue           batch 16 + a memory queue of `--queue_size` online embeddings (cross-batch memory)
    b16_queue_momentum  batch 16 + the queue, filled by a momentum encoder (`--key_momentum`)
    b16_pk              batch 16 drawn P x K: 16 / `--samples_per_class` classes x `--samples_per_class` samples
    b256_plain          batch 256, random batches (16x the samples per step)

Everything else is the `digits_supcon` preset (small_cnn, image size 16, SGD
momentum 0.9, lr 0.05, weight decay 1e-4, tau 0.1, two views), unchanged
across arms; in particular the learning rate is not rescaled with the batch.
Every stage is one `supcon_tf.runner.run`, so each run folder under
`--output_dir/<arm>/seed<k>/` (and `.../linear/`) holds the usual config.json,
model.keras, training_log.csv and metrics.json. `--output_dir` also gets
results.json (every run) and results.md (the table).

Usage:

    python -m experiments.small_batch --output_dir runs/small_batch [--steps 150] [--seeds 0,1,2]
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

ARMS = ("b16_plain", "b16_queue", "b16_queue_momentum", "b16_pk", "b256_plain")
SMALL_BATCH = 16
LARGE_BATCH = 256

FLAGS = flags.FLAGS


def define_flags():
    """Defines this binary's flags; called only when it runs as a program.

    Several names (queue_size, key_momentum, ...) are also `RunConfig` flags of
    experiments/common.py, so defining them at import would clash with it in
    one process (e.g. a test session that imports both).
    """
    flags.DEFINE_string("output_dir", "runs/small_batch", "Where run folders, results.json and results.md are written.")
    flags.DEFINE_integer("steps", 150, "Optimizer steps of every pre-training arm.")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; every arm runs once per seed.")
    flags.DEFINE_list("arms", list(ARMS), f"Arms to run, a subset of: {', '.join(ARMS)}.")
    flags.DEFINE_integer("queue_size", 512, "Memory-queue entries of the queue arms (512 = the 256 x 2 views of b256).")
    flags.DEFINE_integer("queue_warmup_steps", 0, "Steps before the queue joins the loss.")
    flags.DEFINE_float("key_momentum", 0.95, "EMA momentum of the key encoder in b16_queue_momentum.")
    flags.DEFINE_integer("samples_per_class", 4, "K of the b16_pk arm (P = 16 / K classes per batch).")
    flags.DEFINE_integer("probe_epochs", 100, "Linear-probe epochs (cached features).")
    flags.DEFINE_integer("verbose", 0, "Keras verbosity of each run: 0 silent, 2 one line per epoch.")


@dataclasses.dataclass(frozen=True)
class SmallBatchConfig:
    """Resolved, validated settings of the experiment."""

    output_dir: str
    steps: int = 150
    seeds: tuple = (0, 1, 2)
    arms: tuple = ARMS
    queue_size: int = 512
    queue_warmup_steps: int = 0
    key_momentum: float = 0.95
    samples_per_class: int = 4
    probe_epochs: int = 100
    verbose: int = 0

    def __post_init__(self):
        if not self.output_dir:
            raise ValueError("`output_dir` must be a non-empty path, received: output_dir=''")
        for name in ("steps", "queue_size", "samples_per_class", "probe_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, received: {name}={value!r}")
        if not self.seeds or any(not isinstance(s, int) or s < 0 for s in self.seeds) or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"`seeds` must be distinct ints >= 0, received: seeds={list(self.seeds)}")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise ValueError(f"`arms` must be a non-empty subset of {', '.join(ARMS)}; received: arms={list(self.arms)}")
        if SMALL_BATCH % self.samples_per_class:
            raise ValueError(
                f"`samples_per_class` must divide {SMALL_BATCH}, received: samples_per_class={self.samples_per_class}"
            )
        if self.verbose not in (0, 1, 2):
            raise ValueError(f"`verbose` must be 0, 1 or 2, received: verbose={self.verbose}")
        # The arms' RunConfigs validate the rest (queue_warmup_steps, key_momentum, ...) now, not mid-run.
        for arm in self.arms:
            self.pretrain_config(arm, self.seeds[0], os.path.join(self.output_dir, "check"))

    def arm_overrides(self, arm):
        """The `RunConfig` fields in which `arm` differs from the digits_supcon preset."""
        queue = dict(queue_size=self.queue_size, queue_warmup_steps=self.queue_warmup_steps)
        return {
            "b16_plain": dict(batch_size=SMALL_BATCH),
            "b16_queue": dict(batch_size=SMALL_BATCH, **queue),
            "b16_queue_momentum": dict(batch_size=SMALL_BATCH, key_momentum=self.key_momentum, **queue),
            "b16_pk": dict(batch_size=SMALL_BATCH, sampler="class_balanced", samples_per_class=self.samples_per_class),
            "b256_plain": dict(batch_size=LARGE_BATCH),
        }[arm]

    def pretrain_config(self, arm, seed, model_dir):
        from experiments import presets
        from supcon_tf.config import RunConfig

        values = presets.get_preset("digits_supcon")
        values.update(
            model_dir=model_dir,
            seed=seed,
            epochs=1,
            steps_per_epoch=self.steps,  # one cosine schedule over exactly `steps` optimizer steps
            export=False,
            verbose=self.verbose,
        )
        values.update(self.arm_overrides(arm))
        return RunConfig.from_dict(values)

    def probe_config(self, seed, model_dir, pretrained):
        from experiments import presets
        from supcon_tf.config import RunConfig

        values = presets.get_preset("digits_linear")
        values.update(
            model_dir=model_dir, pretrained=pretrained, seed=seed, epochs=self.probe_epochs, export=False, verbose=0
        )
        return RunConfig.from_dict(values)


def config_from_flags() -> SmallBatchConfig:
    """The one place where flags become a config."""
    try:
        seeds = tuple(int(s) for s in FLAGS.seeds)
    except ValueError:
        raise ValueError(f"`seeds` must be integers, received: seeds={FLAGS.seeds}") from None
    return SmallBatchConfig(
        output_dir=FLAGS.output_dir,
        steps=FLAGS.steps,
        seeds=seeds,
        arms=tuple(FLAGS.arms),
        queue_size=FLAGS.queue_size,
        queue_warmup_steps=FLAGS.queue_warmup_steps,
        key_momentum=FLAGS.key_momentum,
        samples_per_class=FLAGS.samples_per_class,
        probe_epochs=FLAGS.probe_epochs,
        verbose=FLAGS.verbose,
    )


def _log(message):
    print(f"[small_batch {time.strftime('%H:%M:%S')}] {message}", flush=True)


def run(config: SmallBatchConfig):
    """Runs every arm for every seed; returns one dict per run."""
    from supcon_tf import runner

    os.makedirs(config.output_dir, exist_ok=True)
    runs = []
    for arm in config.arms:
        for seed in config.seeds:
            run_dir = os.path.join(config.output_dir, arm, f"seed{seed}")
            pretrain = runner.run(config.pretrain_config(arm, seed, run_dir))
            probe = runner.run(
                config.probe_config(seed, os.path.join(run_dir, "linear"), os.path.join(run_dir, "model.keras"))
            )
            row = dict(
                arm=arm,
                seed=seed,
                test_top1=probe["test_top1"],
                final_train_loss=pretrain["final_train_loss"],
                pretrain_seconds=pretrain["train_seconds"],
            )
            _log(f"{arm} seed {seed}: test top-1 {row['test_top1']:.4f} (pre-training {row['pretrain_seconds']:.0f} s)")
            runs.append(row)
    return runs


def summarize(runs, arms):
    """Per arm: mean and sample std of test top-1 over seeds, the per-seed values, mean pre-training time."""
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        top1 = [r["test_top1"] for r in mine]
        rows.append(
            dict(
                arm=arm,
                mean=statistics.mean(top1),
                std=statistics.stdev(top1) if len(top1) > 1 else 0.0,
                per_seed=top1,
                pretrain_seconds=statistics.mean(r["pretrain_seconds"] for r in mine),
            )
        )
    return rows


def format_table(config, rows):
    lines = [
        "| arm | batch | contrast entries per anchor | test top-1 (mean +- std) | per seed | pre-training time per seed (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        overrides = config.arm_overrides(row["arm"])
        batch = overrides["batch_size"]
        entries = f"{2 * batch - 1}"
        if overrides.get("queue_size"):
            entries += f" + {overrides['queue_size']} queued"
        per_seed = ", ".join(f"{v * 100:.2f}" for v in row["per_seed"])
        lines.append(
            f"| {row['arm']} | {batch} | {entries} | {row['mean'] * 100:.2f} +- {row['std'] * 100:.2f} "
            f"| {per_seed} | {row['pretrain_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        config = config_from_flags()
    except ValueError as error:
        print(f"small_batch: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    start = time.time()
    runs = run(config)
    rows = summarize(runs, config.arms)
    table = format_table(config, rows)
    wall = time.time() - start
    with open(os.path.join(config.output_dir, "results.json"), "w") as f:
        json.dump({"config": dataclasses.asdict(config), "runs": runs, "summary": rows, "wall_seconds": wall}, f, indent=2)
    with open(os.path.join(config.output_dir, "results.md"), "w") as f:
        f.write(table + f"\n\nTotal wall time: {wall:.0f} s.\n")
    print()
    print(table)
    print(f"\nTotal wall time: {wall:.0f} s. Outputs in {config.output_dir}/")
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
