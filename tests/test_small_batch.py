"""The small-batch study: configs, verdicts, rendering from results.json, and a tiny run with validation-chosen
queue settings that reads the test split once, at the end (slow)."""

import json

import pytest

from experiments import small_batch
from experiments.small_batch import SmallBatchConfig
from helpers import run_binary_in_process



def _results(per_arm):
    runs, seeds = [], range(len(next(iter(per_arm.values()))))
    config = SmallBatchConfig(output_dir="runs/x", seeds=tuple(seeds), queue_size_grid=(128, 512))
    for arm, values in per_arm.items():
        for seed, top1 in zip(seeds, values):
            stage = config.pretrain_config(arm, seed, "x", queue_size=128)
            runs.append(dict(arm=arm, seed=seed, batch_size=stage.optim.batch_size, queue_size=stage.model.queue_size,
                             key_momentum=stage.model.key_momentum, test_top1=top1, pretrain_seconds=10.0))
    return {
        "protocol": {"command": "python -m experiments.small_batch", "registered_at": "2026-01-01 00:00:00 UTC",
                     "config": config.to_dict()},
        "facts": {"machine": {"cpu_count": 2, "gpus": []}, "load_average": {"mean": 2.5, "max": 4.0},
                  "data": {"image_size": 8, "validation_fraction": 0.2, "train_part": 1149, "validation": 288, "test": 360}},
        "timing": {"wall_seconds": 600.0},
        "tuning": {"b16_queue": {"trials": [{"queue_size": 128, "key_momentum": None, "val_accuracy": 0.9},
                                            {"queue_size": 512, "key_momentum": None, "val_accuracy": 0.8}],
                                 "selected": {"queue_size": 128, "key_momentum": None}}},
        "runs": runs,
        "summary": small_batch.summarize(runs, tuple(per_arm)),
        "verdicts": small_batch.compare_arms(runs, tuple(per_arm)),
    }


def test_settings_are_validated_with_the_grids():
    with pytest.raises(ValueError, match="key_momentum"):
        SmallBatchConfig(output_dir="runs/x", key_momentum_grid=(0.9, 1.5))
    with pytest.raises(ValueError, match="distinct"):
        SmallBatchConfig(output_dir="runs/x", queue_size_grid=(128, 128))
    config = SmallBatchConfig(output_dir="runs/x")
    stage = config.pretrain_config("b16_queue_momentum", 3, "runs/x/a", queue_size=128, key_momentum=0.99)
    assert (stage.model.queue_size, stage.model.key_momentum, stage.runtime.seed) == (128, 0.99, 3)
    assert stage.evaluation.validation_fraction > 0 and not stage.evaluation.evaluate_test  # training never reads the test split
    assert config.probe_config().method == "linear" and config.probe_config().optim.epochs == config.probe_epochs


def test_verdicts_compare_each_small_batch_arm_with_plain_and_with_batch_256():
    results = _results({
        "b16_plain": [0.90, 0.91, 0.90, 0.89, 0.90],
        "b16_queue": [0.95, 0.96, 0.95, 0.94, 0.95],
        "b256_plain": [0.97, 0.98, 0.97, 0.96, 0.97],
    })
    verdicts = {(v["arm"], v["against"]): v["verdict"] for v in results["verdicts"]}
    assert verdicts == {
        ("b16_queue", "b16_plain"): "yes",
        ("b256_plain", "b16_plain"): "yes",
        ("b256_plain", "b16_queue"): "yes",
    }


def test_rendering_from_results_json():
    results = _results({"b16_plain": [0.90, 0.92], "b16_queue": [0.93, 0.91]})
    table = small_batch.format_table(results)
    assert table.startswith("| arm |") and "| b16_queue | 16 | 31 + 128 queued | 92.00 +- 1.41 | 93.00, 91.00 | 10 |" in table
    document = small_batch.format_document(results)
    for needle in ("Rendered from `reports/small_batch/results.json`", "registered 2026-01-01", "b16_queue: queue 128",
                   "queue 512: 80.0", "**direction only**", "one image = 0.28 points"):
        assert needle in document, needle
    readme = small_batch.readme_table(results)
    assert "--render_only --output_dir reports/small_batch --readme" in readme
    assert "| b16_queue | 16 | 31 + 128 queued | 92.0 +- 1.4 | direction only | - |" in readme


@pytest.mark.slow
def test_tiny_study_chooses_the_queue_on_validation_and_reads_the_test_split_once(tmp_path, monkeypatch):
    # The binary runs in this process (`run_binary_in_process`: its entry, flags and exit status), with
    # data.load_digits wrapped to print every split it loads (the package's name and the one `data.splits` calls).
    from supcon_tf import data

    load = data.load_digits

    def logged(split, **kwargs):
        print("SPLIT", split, flush=True)
        return load(split, **kwargs)

    for module in (data, data.sources):
        monkeypatch.setattr(module, "load_digits", logged)
    result = run_binary_in_process(
        "small_batch", f"--output_dir={tmp_path}/out", f"--work_dir={tmp_path}/work",
        "--steps=2", "--seeds=0,1", "--probe_epochs=1", "--arms=b16_plain,b16_queue", "--queue_size_grid=32,64",
        f"--document={tmp_path}/doc.md",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [t["queue_size"] for t in results["tuning"]["b16_queue"]["trials"]] == [32, 64]
    chosen = results["tuning"]["b16_queue"]["selected"]["queue_size"]
    assert {r["queue_size"] for r in results["runs"] if r["arm"] == "b16_queue"} == {chosen}
    assert results["facts"]["data"]["test"] == 360 and results["protocol"]["config"]["seeds"] == [0, 1]
    assert (tmp_path / "doc.md").read_text() == small_batch.format_document(results)
    log = result.stdout
    assert log.count("SPLIT test") == 1 and log.index("final evaluation") < log.index("SPLIT test")
