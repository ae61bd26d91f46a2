r"""Small-batch SupCon on digits: a memory queue, a momentum encoder and P x K sampling against batches of 16 and 256.

Under the digits report's rules (`experiments/report`): every stage is one
`supcon_tf.runner.run` with the report's shared settings (8x8 digits, a 20%
validation split carved from TRAIN and seeded by the run's seed, the test
split never read by training); the queue size and the key momentum are
chosen on the validation split (seed `tuning_seed`) when grids are given; each
arm then runs for every seed, and the test split is read once, at the end,
to score every arm's linear probe. Verdicts: one-sided Welch t-tests over
seeds (`experiments.report.verdicts`).

Every arm pre-trains the same small CNN + projection head with SupCon for the
same number of optimizer steps (`--steps`, one cosine schedule), then trains
the report's linear probe on the frozen encoder. The arms:

    b16_plain           batch 16, random batches
    b16_queue           batch 16 + a memory queue of online embeddings (cross-batch memory)
    b16_queue_momentum  batch 16 + the queue, filled by a momentum encoder
    b16_pk              batch 16 drawn P x K: 16 / `--samples_per_class` classes x `--samples_per_class` samples
    b256_plain          batch 256, random batches (16x the samples per step)

The learning rate is not rescaled with the batch. Run folders go to
`--work_dir` (default: `--output_dir`); `--output_dir` gets results.json
(every number and fact, and the registered protocol) and results.md (the
table); `--document` also writes the full Markdown write-up. Everything
printed is rendered from results.json, and `--render_only` renders it again.

    python -m experiments.small_batch --output_dir reports/small_batch --work_dir runs/small_batch \
        --queue_size_grid 128,512 --key_momentum_grid 0.9,0.99 --document experiments/small_batch_results.md
    python -m experiments.small_batch --render_only --output_dir reports/small_batch --document experiments/small_batch_results.md
    python -m experiments.small_batch --render_only --output_dir reports/small_batch --readme
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time

from experiments import flagging
from experiments.flagging import option

ARMS = ("b16_plain", "b16_queue", "b16_queue_momentum", "b16_pk", "b256_plain")
SMALL_BATCH = 16
LARGE_BATCH = 256
QUEUE_ARMS = ("b16_queue", "b16_queue_momentum")
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class SmallBatchConfig:
    """Resolved, validated settings of the experiment (every field with a help text is a flag of its name).

    The stages are RunConfigs: `pretrain_config` composes the digits_supcon
    preset with the report's shared settings and the arm's options,
    `probe_config` the report's linear probe. The queue and sampler fields
    are the arms' settings (RunConfig validates them when the arms' configs
    are built, at construction).
    """

    output_dir: str = option("runs/small_batch", "Where results.json and results.md are written.")
    work_dir: str | None = option(None, "Where the run folders go (default: --output_dir).")
    steps: int = option(150, "Optimizer steps of every pre-training arm.")
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "Seeds; every arm runs once per seed.")
    arms: tuple[str, ...] = option(ARMS, f"Arms to run, a subset of: {', '.join(ARMS)}.")
    queue_size: int = option(512, "Memory-queue entries of the queue arms, when --queue_size_grid is empty.")
    queue_size_grid: tuple[int, ...] = option(
        (), "Queue sizes to choose from on the validation split (empty: --queue_size)."
    )
    queue_warmup_steps: int = option(0, "Steps before the queue joins the loss.")
    key_momentum: float = option(0.95, "EMA momentum of the key encoder, when --key_momentum_grid is empty.")
    key_momentum_grid: tuple[float, ...] = option(
        (), "Key momenta to choose from on the validation split (with the queue size)."
    )
    samples_per_class: int = option(4, "K of the b16_pk arm (P = 16 / K classes per batch).")
    probe_epochs: int = option(20, "Linear-probe epochs (cached features).")
    tuning_seed: int = 0
    verbose: int = option(0, "Keras verbosity of each run: 0 silent, 2 one line per epoch.")

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
        for name in ("queue_size_grid", "key_momentum_grid"):
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(set(values)) != len(values):
                raise ValueError(f"`{name}` must be a tuple of distinct values, received: {name}={values!r}")
        # The arms' RunConfigs validate the rest (queue sizes, momenta, warm-up, verbose, ...) now, not mid-run.
        for arm in self.arms:
            for queue_size in self.queue_size_grid or (self.queue_size,):
                for momentum in self.key_momentum_grid or (self.key_momentum,):
                    self.pretrain_config(arm, self.seeds[0], "check", queue_size=queue_size, key_momentum=momentum)

    @property
    def runs_dir(self):
        return self.work_dir or self.output_dir

    def arm_overrides(self, arm, queue_size=None, key_momentum=None):
        """The `RunConfig` fields in which `arm` differs from the digits_supcon preset."""
        queue = dict(queue_size=queue_size or self.queue_size, queue_warmup_steps=self.queue_warmup_steps)
        return {
            "b16_plain": dict(batch_size=SMALL_BATCH),
            "b16_queue": dict(batch_size=SMALL_BATCH, **queue),
            "b16_queue_momentum": dict(
                batch_size=SMALL_BATCH, key_momentum=self.key_momentum if key_momentum is None else key_momentum, **queue
            ),
            "b16_pk": dict(batch_size=SMALL_BATCH, sampler="class_balanced", samples_per_class=self.samples_per_class),
            "b256_plain": dict(batch_size=LARGE_BATCH),
        }[arm]

    def pretrain_config(self, arm, seed, model_dir, queue_size=None, key_momentum=None):
        from experiments import presets
        from experiments.report.config import SHARED
        from supcon_tf.config import RunConfig

        values = {**presets.get_preset("digits_supcon"), **SHARED}
        values.update(
            model_dir=model_dir,
            seed=seed,
            epochs=1,
            steps_per_epoch=self.steps,  # one cosine schedule over exactly `steps` optimizer steps
            verbose=self.verbose,
        )
        values.update(self.arm_overrides(arm, queue_size, key_momentum))
        return RunConfig.from_dict(values)

    def probe_config(self):
        """The report's linear probe (`experiments.report.config`), with `probe_epochs`."""
        from experiments.report.config import ReportConfig

        return ReportConfig.full().stages["linear"].replace(epochs=self.probe_epochs)

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ProgramOptions:
    """What the program does besides the study's settings: run it, or only render its results."""

    render_only: bool = option(False, "Only render results.md (and --document) from --output_dir/results.json.")
    document: str | None = option(
        None, "Also write the full Markdown write-up here (e.g. experiments/small_batch_results.md)."
    )
    readme: bool = option(False, "With --render_only: print README.md's small-batch table instead.")


def define_flags():
    """Defines this binary's flags; called only when it runs as a program.

    Several names (queue_size, key_momentum, ...) are also `RunConfig` flags of
    experiments/common.py, so defining them at import would clash with it in
    one process (e.g. a test session that imports both).
    """
    flagging.define(SmallBatchConfig)
    flagging.define(ProgramOptions)


def config_from_flags() -> SmallBatchConfig:
    """The one place where flags become a config."""
    return flagging.from_flags(SmallBatchConfig)


def _log(message):
    print(f"[small_batch {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------
# The study.
# ---------------------------------------------------------------------------


def tune(config):
    """Chooses the queue size (and key momentum) of each queue arm on the validation split; `{arm: record}`."""
    from experiments import training

    out = {}
    for arm in (a for a in config.arms if a in QUEUE_ARMS):
        sizes = config.queue_size_grid or (config.queue_size,)
        momenta = (config.key_momentum_grid or (config.key_momentum,)) if arm == "b16_queue_momentum" else (None,)
        if len(sizes) * len(momenta) == 1:
            out[arm] = {"trials": [], "selected": {"queue_size": sizes[0], "key_momentum": momenta[0]}}
            continue
        trials = []
        for size in sizes:
            for momentum in momenta:
                folder = os.path.join(config.runs_dir, "tuning", arm, f"q{size}_m{momentum}")
                stage = config.pretrain_config(arm, config.tuning_seed, folder, queue_size=size, key_momentum=momentum)
                result = training.train_and_score(stage, config.probe_config())
                trials.append({"queue_size": size, "key_momentum": momentum, "val_accuracy": result["val_accuracy"]})
                _log(f"tuning {arm}: queue {size}, momentum {momentum}: val top-1 {result['val_accuracy']:.4f}")
        best = max(trials, key=lambda t: t["val_accuracy"])  # ties: the first in grid order
        out[arm] = {"trials": trials, "selected": {"queue_size": best["queue_size"], "key_momentum": best["key_momentum"]}}
    return out


def run(config: SmallBatchConfig, tuning=None):
    """Runs every arm for every seed (validation-scored, the test split unread); returns one dict per run."""
    import keras

    from experiments import training

    tuning = tuning or {}
    runs = []
    for arm in config.arms:
        chosen = tuning.get(arm, {}).get("selected", {})
        for seed in config.seeds:
            run_dir = os.path.join(config.runs_dir, arm, f"seed{seed}")
            stage = config.pretrain_config(arm, seed, run_dir, chosen.get("queue_size"), chosen.get("key_momentum"))
            result = training.train_and_score(stage, config.probe_config())
            row = dict(
                arm=arm,
                seed=seed,
                batch_size=stage.optim.batch_size,
                queue_size=stage.model.queue_size,
                key_momentum=stage.model.key_momentum,
                val_accuracy=result["val_accuracy"],
                final_train_loss=result["stage"]["final_train_loss"],
                pretrain_seconds=result["stage"]["train_seconds"],
                probe_seconds=result["probe"]["train_seconds"],
                classifier=os.path.join(run_dir, "linear", "model.keras"),
            )
            _log(f"{arm} seed {seed}: val top-1 {row['val_accuracy']:.4f} (pre-training {row['pretrain_seconds']:.0f} s)")
            runs.append(row)
            keras.backend.clear_session()
    return runs


def evaluate_on_test(runs):
    """Test top-1 of every run's probe: the test split is read here, once, after all training."""
    import keras

    from supcon_tf import data, evaluation
    from supcon_tf import models as _models  # noqa: F401  (registers the classes for load_model)

    images, labels = data.load_digits("test")
    size = keras.saving.load_model(runs[0]["classifier"], compile=False).encoder.inputs[0].shape[1]
    test = data.make_eval_dataset(data.from_arrays(images, labels), batch_size=512, image_size=size)
    for row in runs:
        model = keras.saving.load_model(row["classifier"], compile=False)
        probabilities, truth = evaluation.predict_probabilities(model, test)
        row["test_top1"] = evaluation.accuracy(probabilities, truth)
        keras.backend.clear_session()
    return len(labels)


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


def compare_arms(runs, arms):
    """Welch verdicts: every batch-16 arm against b16_plain, and b256_plain against each batch-16 arm."""
    from experiments.report import verdicts

    top1 = {arm: [r["test_top1"] for r in runs if r["arm"] == arm] for arm in arms}
    out = []
    pairs = [(arm, "b16_plain") for arm in arms if arm.startswith("b16_") and arm != "b16_plain" and "b16_plain" in top1]
    pairs += [("b256_plain", arm) for arm in arms if arm.startswith("b16_") and "b256_plain" in top1]
    for better, than in pairs:
        result = verdicts.compare(top1[better], top1[than], higher_is_better=True, alpha=ALPHA)
        detail = result["detail"].replace("SupCon's advantage", "advantage").replace("CE significantly", "the second significantly")
        out.append({"arm": better, "against": than, "verdict": result["verdict"], "detail": detail})
    return out


# ---------------------------------------------------------------------------
# Rendering (from results.json only).
# ---------------------------------------------------------------------------


def _entries(run_row):
    entries = f"{2 * run_row['batch_size'] - 1}"
    if run_row.get("queue_size"):
        entries += f" + {run_row['queue_size']} queued"
    return entries


def format_table(results):
    """The results table (Markdown), from results.json's runs and summary."""
    lines = [
        "| arm | batch | contrast entries per anchor | test top-1 (mean +- std) | per seed | pre-training time per seed (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        first = next(r for r in results["runs"] if r["arm"] == row["arm"])
        per_seed = ", ".join(f"{v * 100:.2f}" for v in row["per_seed"])
        lines.append(
            f"| {row['arm']} | {first['batch_size']} | {_entries(first)} | {row['mean'] * 100:.2f} +- "
            f"{row['std'] * 100:.2f} | {per_seed} | {row['pretrain_seconds']:.0f} |"
        )
    return "\n".join(lines)


def format_document(results):
    """The full write-up (experiments/small_batch_results.md), every number from results.json."""
    config, facts, timing = results["protocol"]["config"], results["facts"], results["timing"]
    machine, load, data = facts["machine"], facts["load_average"], facts["data"]
    small = [r for r in results["runs"] if r["batch_size"] == SMALL_BATCH][:1]
    large = [r for r in results["runs"] if r["batch_size"] == LARGE_BATCH][:1]
    lines = [
        "# Small-batch SupCon on digits: memory queue, momentum encoder, P x K sampling",
        "",
        "Rendered from `reports/small_batch/results.json` by",
        "",
        "    python -m experiments.small_batch --render_only --output_dir reports/small_batch --document experiments/small_batch_results.md",
        "",
        f"produced by `{results['protocol']['command']}` (registered {results['protocol']['registered_at']}, before "
        f"any training); wall time {timing['wall_seconds'] / 60:.1f} min on {machine['cpu_count']} CPU cores "
        f"({'GPUs: ' + ', '.join(machine['gpus']) if machine['gpus'] else 'no GPU'}), load average mean "
        f"{load['mean']:.1f} (max {load['max']:.1f}) while it ran.",
        "",
        "## Protocol (registered before the run)",
        "",
        f"- Every arm pre-trains the digits_supcon recipe at the report's settings ({data['image_size']}x"
        f"{data['image_size']} images, SGD momentum 0.9, learning rate 0.05 not rescaled with the batch, tau 0.1, "
        f"two views) for exactly **{config['steps']} optimizer steps** (one cosine schedule), on the training part "
        f"of the train split ({data['train_part']} images); a {100 * data['validation_fraction']:.0f}% validation "
        f"split ({data['validation']} images) is carved from TRAIN, seeded by the run's seed.",
        f"- Then the report's linear probe on the frozen encoder ({config['probe_epochs']} epochs on cached features).",
        f"- Queue size{' and key momentum' if config['key_momentum_grid'] else ''} chosen on the validation split of "
        f"seed {config['tuning_seed']} (grid: queue {list(config['queue_size_grid']) or [config['queue_size']]}, "
        f"momentum {list(config['key_momentum_grid']) or [config['key_momentum']]}); P x K with K = "
        f"{config['samples_per_class']}.",
        f"- {len(config['seeds'])} seeds ({', '.join(map(str, config['seeds']))}); the test split ({data['test']} "
        f"images, one image = {100 / data['test']:.2f} points) is read once, after all training, to score every probe.",
        f"- Verdicts: one-sided Welch t-test over seeds, *yes* at p < {ALPHA}, *direction only* when better on "
        "average only, *no* otherwise.",
    ]
    if small and large:
        samples_small, samples_large = config["steps"] * SMALL_BATCH, config["steps"] * LARGE_BATCH
        lines.append(
            f"- {config['steps']} steps are {samples_small:,} samples ({samples_small / data['train_part']:.1f} epochs) "
            f"at batch {SMALL_BATCH} and {samples_large:,} ({samples_large / data['train_part']:.1f} epochs) at batch "
            f"{LARGE_BATCH}. The study compares arms at an equal step budget; no arm is trained to convergence."
        )
    lines += ["", "## Choices on the validation split", ""]
    if results["tuning"]:
        for arm, entry in results["tuning"].items():
            chosen = entry["selected"]
            trials = "; ".join(
                f"queue {t['queue_size']}" + (f", momentum {t['key_momentum']}" if t["key_momentum"] is not None else "")
                + f": {100 * t['val_accuracy']:.1f}"
                for t in entry["trials"]
            ) or "one candidate"
            lines.append(
                f"- {arm}: queue {chosen['queue_size']}"
                + (f", momentum {chosen['key_momentum']}" if chosen["key_momentum"] is not None else "")
                + f" (validation top-1: {trials})"
            )
    else:
        lines.append("- no queue arm in this run")
    lines += ["", "## Results (test top-1, mean +- sample std over seeds)", "", format_table(results), "", "## Verdicts", ""]
    for entry in results["verdicts"]:
        lines.append(f"- {entry['arm']} better than {entry['against']}: **{entry['verdict']}** ({entry['detail']})")
    lines.append("")
    return "\n".join(lines)


def readme_table(results, path="reports/small_batch/results.json"):
    """README.md's small-batch table, with the command that renders it."""
    config = results["protocol"]["config"]
    lines = [
        f"<!-- rendered from {path} by `python -m experiments.small_batch --render_only --output_dir "
        f"{os.path.dirname(path)} --readme` -->",
        "",
        "| arm | batch | contrast entries per anchor | test top-1 (mean +- std) | better than b16_plain? | b256_plain better? |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = {(e["arm"], e["against"]): e["verdict"] for e in results["verdicts"]}
    for row in results["summary"]:
        first = next(r for r in results["runs"] if r["arm"] == row["arm"])
        lines.append(
            f"| {row['arm']} | {first['batch_size']} | {_entries(first)} | {100 * row['mean']:.1f} +- "
            f"{100 * row['std']:.1f} | {verdicts.get((row['arm'], 'b16_plain'), '-')} | "
            f"{verdicts.get(('b256_plain', row['arm']), '-')} |"
        )
    lines += [
        "",
        f"({config['steps']} optimizer steps per arm, {len(config['seeds'])} seeds, linear-probe test top-1; "
        f"one-sided Welch t-tests at p < {ALPHA}; wall time {results['timing']['wall_seconds'] / 60:.1f} min.)",
    ]
    return "\n".join(lines)


def write_outputs(results, config_output_dir, document=None):
    os.makedirs(config_output_dir, exist_ok=True)
    with open(os.path.join(config_output_dir, "results.md"), "w") as f:
        f.write(format_table(results) + f"\n\nTotal wall time: {results['timing']['wall_seconds']:.0f} s.\n")
    if document:
        with open(document, "w") as f:
            f.write(format_document(results))


# ---------------------------------------------------------------------------
# The program.
# ---------------------------------------------------------------------------


def study(config, command):
    """Registers, tunes, trains, evaluates once; writes results.json and results.md; returns the results."""
    from experiments.report import compute

    start = time.time()
    os.makedirs(config.runs_dir, exist_ok=True)
    protocol_path = os.path.join(config.runs_dir, "protocol.json")
    protocol = {"registered_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "command": command, "config": config.to_dict()}
    if os.path.exists(protocol_path):
        with open(protocol_path) as f:
            previous = json.load(f)
        if previous["config"] != json.loads(json.dumps(config.to_dict())):
            raise ValueError(f"{config.runs_dir} holds runs of another small-batch config: choose another --work_dir")
        protocol = previous
    else:
        compute._write_json(protocol_path, protocol)
    with compute.LoadSampler() as load:
        facts = {"machine": compute.machine_facts()}
        stage = config.pretrain_config(config.arms[0], config.tuning_seed, "facts")
        from supcon_tf import data

        split = data.split_train_validation(stage, stage.evaluation.validation_fraction, stage.runtime.seed)
        facts["data"] = {
            "image_size": stage.data.image_size, "validation_fraction": stage.evaluation.validation_fraction,
            "train_part": split.num_train, "validation": split.num_validation,
        }
        tuning = tune(config)
        runs = run(config, tuning)
        _log("final evaluation: the test split is read now, once")
        facts["data"]["test"] = evaluate_on_test(runs)
    facts["load_average"] = load.summary()
    results = {
        "protocol": protocol,
        "facts": facts,
        "timing": {"wall_seconds": round(time.time() - start, 1)},
        "tuning": {arm: entry for arm, entry in tuning.items() if entry["trials"]},
        "runs": runs,
        "summary": summarize(runs, config.arms),
        "verdicts": compare_arms(runs, config.arms),
    }
    os.makedirs(config.output_dir, exist_ok=True)
    compute._write_json(os.path.join(config.output_dir, "results.json"), results)
    return results


def _main():
    config = config_from_flags()
    options = flagging.from_flags(ProgramOptions)
    path = os.path.join(config.output_dir, "results.json")
    if options.render_only:
        if not os.path.exists(path):
            raise FileNotFoundError(f"no results to render: {path} does not exist")
        with open(path) as f:
            results = json.load(f)
        if options.readme:
            print(readme_table(results, path))
            return 0
    else:
        command = "python -m experiments.small_batch " + " ".join(sys.argv[1:])
        results = study(config, command.strip())
    write_outputs(results, config.output_dir, options.document)
    print()
    print(format_table(results))
    print(f"\nTotal wall time: {results['timing']['wall_seconds']:.0f} s. Outputs in {config.output_dir}/")
    return 0


main = flagging.absl_main(_main)  # `absl.app.run(main)` after `define_flags()`, as `entry` does


def entry():
    define_flags()
    flagging.run_binary(_main)


if __name__ == "__main__":
    entry()
