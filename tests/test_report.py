"""The digits report: config, monitor, equal-time plan, the renderer against a golden file, the CLI, and the
--quick run end to end with a guard that the test split is read once, after all training (slow).

The golden file: `tests/data/report_golden.md` is `render.report_markdown` of the fixed
`tests/data/report_results.json`. After an intended change of the renderer, rewrite it with
`UPDATE_GOLDEN=1 python -m pytest tests/test_report.py -k golden` and review the diff.
"""

import json
import os

import numpy as np
import pytest

from experiments.report import compute, figures, monitor, readme, render
from experiments.report.config import METHODS, ReportConfig, SearchSpace
from helpers import ROOT, run_binary_in_process

DATA = os.path.join(ROOT, "tests", "data")
FIXTURE = os.path.join(DATA, "report_results.json")
GOLDEN = os.path.join(DATA, "report_golden.md")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


# ---------------------------------------------------------------------------
# Config.
# ---------------------------------------------------------------------------


def test_full_and_quick_configs_compose_the_digits_presets():
    from experiments import presets

    for config in (ReportConfig.full(), ReportConfig.quick()):
        for method in METHODS:
            stage = config.stages[method]
            preset = presets.get_preset(f"digits_{method}")
            assert stage.method == method and stage.optim.optimizer == preset["optimizer"]
            assert stage.evaluation.validation_fraction == 0.2 and stage.evaluation.evaluate_test is False  # never reads the test split
        assert config.stages["linear"].method == "linear" and config.stages["linear"].evaluation.cache_features
        json.dumps(config.to_dict())  # registrable
    full = ReportConfig.full()
    assert len(full.seeds) == 5 and full.stability.size == 12 and full.stability.warmup_epochs == (0, 2)
    assert all(space.max_trials == full.search["ce"].max_trials for space in full.search.values())  # equal budgets
    # Amendment 1: every method, CE included, searches warm-up; the amendment is part of the registration.
    assert all(space.warmup_epochs == (0, 5, 10) for space in full.search.values())
    assert full.to_dict()["amendments"][0]["date"] == "2026-12-07"


def test_an_amended_protocol_keeps_the_earlier_registration(tmp_path):
    from experiments.report import compute

    config = ReportConfig.quick(output_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"))
    os.makedirs(tmp_path / "out")
    first = {"registered_at": "2026-11-30 22:45:59 UTC", "command": "python -m experiments.report", "config": {"mode": "full"}}
    with open(tmp_path / "out" / "results.json", "w") as f:
        json.dump({"protocol": dict(first, verdict_rules="...")}, f)
    amended = config.replace(amendments=({"date": "2026-12-07", "reason": "r", "changes": "c"},))
    os.makedirs(tmp_path / "work")
    protocol = compute.register(amended, "cmd")
    assert protocol["earlier_registrations"] == [first]
    assert protocol["config"]["amendments"] == [{"date": "2026-12-07", "reason": "r", "changes": "c"}]
    lines = "\n".join(render._amendments(protocol))
    assert "Earlier registration** at 2026-11-30 22:45:59 UTC" in lines and "**Amendment 1** (2026-12-07" in lines
    again = compute.register(config, "cmd")  # a resumed run keeps its registration
    assert again["registered_at"] == protocol["registered_at"] and again["earlier_registrations"] == [first]
    with pytest.raises(ValueError, match="an amendment must be a dict with date, reason and changes"):
        config.replace(amendments=({"date": "x"},))
    with pytest.raises(ValueError, match="warm-up epochs"):
        ReportConfig.quick(search={m: SearchSpace(learning_rates=(0.1,), epochs=(3,), warmup_epochs=(3,)) for m in METHODS})


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(seeds=(0,)), "seeds"),
        (dict(seeds=(0, 0)), "seeds"),
        (dict(search={m: SearchSpace(learning_rates=(0.1,), epochs=(3,), temperatures=(0.1,)) for m in METHODS}), "temperature"),
        (dict(search={m: SearchSpace(learning_rates=(-1.0,), epochs=(3,)) for m in METHODS}), "learning_rate"),
        (dict(work_dir=""), "work_dir"),
    ],
)
def test_report_config_rejects(changes, message):
    with pytest.raises(ValueError, match=message):
        ReportConfig.quick(**changes)


def test_work_dir_of_another_config_is_refused(tmp_path):
    config = ReportConfig.quick(work_dir=str(tmp_path / "work"), output_dir=str(tmp_path / "out"))
    compute.prepare_work_dir(config)
    compute.prepare_work_dir(config)  # the same config resumes
    other = config.replace(seeds=(0, 1, 2))
    with pytest.raises(ValueError, match="different report config"):
        compute.prepare_work_dir(other)
    compute.prepare_work_dir(other, overwrite=True)


# ---------------------------------------------------------------------------
# Monitor and the equal-time plan.
# ---------------------------------------------------------------------------


def _run(seed, stage, monitor_seconds, probe):
    return {"seed": seed, "stage_seconds": stage, "monitor_seconds": monitor_seconds, "probe_seconds": probe,
            "train_seconds": stage - monitor_seconds + probe}


def test_the_selected_tuning_trial_stands_for_the_equal_epoch_run_only_when_it_is_that_run(tmp_path):
    config = ReportConfig.quick(work_dir=str(tmp_path / "work"))
    trial = tmp_path / "work" / "tuning" / "supcon" / "trial_0"
    trial.mkdir(parents=True)
    tuned = config.stage("supcon", seed=0, epochs=3, learning_rate=0.2, model_dir=str(trial))
    (trial / "config.json").write_text(json.dumps(tuned.to_dict()))
    (trial / "FINISHED").write_text("")
    selected = {"model_dir": str(trial), "status": "COMPLETED"}
    equal_run = tuned.replace(model_dir=str(tmp_path / "work" / "equal_epochs" / "supcon" / "seed_0"))
    assert compute._tuning_trial_of(equal_run, selected) == str(trial)
    for other in (equal_run.replace(seed=1), equal_run.replace(epochs=4), equal_run.replace(temperature=0.5)):
        assert compute._tuning_trial_of(other, selected) is None
    assert compute._tuning_trial_of(equal_run, dict(selected, status="FAILED")) is None
    (trial / "FINISHED").unlink()
    assert compute._tuning_trial_of(equal_run, selected) is None  # an unfinished trial is not used


def test_equal_time_plan_gives_cheaper_methods_more_epochs():
    equal_epochs = {
        "epochs": {"ce": 30, "supcon": 30, "simclr": 30},
        "runs": {
            "ce": [{**_run(s, 25.0, 5.0, 3.0), "train_seconds": 20.0} for s in (0, 1)],  # CE: its probe is not training
            "supcon": [_run(s, 55.0, 5.0, 10.0) for s in (0, 1)],  # 60 s: the budget
            "simclr": [_run(s, 52.0, 5.0, 10.0) for s in (0, 1)],  # 57 s: within 10% -> reused
        },
    }
    budget, plan = compute.equal_time_plan(equal_epochs, tolerance=0.1)
    assert budget == pytest.approx(60.0)
    assert plan["ce"]["epochs"] == 90 and not plan["ce"]["reused"]  # (60 - 0) / (20 / 30)
    assert plan["supcon"]["reused"] and plan["simclr"]["reused"] and plan["simclr"]["epochs"] == 30


def test_curves_of_reads_the_monitor_and_the_probe_log(tmp_path):
    run = tmp_path / "run"
    (run / "linear").mkdir(parents=True)
    records = {str(e): {"knn_top1": 0.9, "seconds": 0.5, "val_accuracy": 0.8} for e in range(1, 11)}
    (run / monitor.CURVE_FILE).write_text(json.dumps(records))
    (run / "linear" / "training_log.csv").write_text("epoch,val_accuracy\n" + "".join(f"{e},0.{50 + e}\n" for e in range(10)))
    rules = ReportConfig.quick().rules
    result = compute.curves_of(str(run), "ce", rules, probed=True)
    assert result["curves"]["knn_top1"] == [0.9] * 10 and result["monitor_seconds"] == 5.0
    assert result["convergence"]["knn_top1"]["converged"] is True
    assert result["convergence"]["probe_val_accuracy"]["converged"] is False  # still rising by 2 points
    assert result["converged"] is False


# ---------------------------------------------------------------------------
# The renderer: a fixed results.json against a golden file.
# ---------------------------------------------------------------------------


def test_render_matches_golden(tmp_path):
    results = render.load(FIXTURE)
    text = render.report_markdown(results)
    if os.environ.get("UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.write(text)
    with open(GOLDEN) as f:
        assert text == f.read()
    path = render.render(results, str(tmp_path), plots=False)
    assert open(path).read() == text


def test_render_states_protocol_before_numbers_and_every_threshold():
    results = render.load(FIXTURE)
    text = render.report_markdown(results)
    rules = results["protocol"]["config"]["rules"]
    assert text.index("## Pre-registered protocol") < text.index("## Claims") < text.index("## Test results")
    for needle in (
        f"p < {rules['alpha']}",
        f"at most {100 * rules['convergence_tolerance']:.1f} points",
        f"last {100 * rules['convergence_fraction']:.0f}% of epochs",
        f"{rules['bootstrap_resamples']} resamples",
        "**mixed**",
        f"Registered at {results['protocol']['registered_at']}",
        f"{results['facts']['machine']['cpu_count']} CPU cores",
        f"test split {results['facts']['data']['test']} images",
    ):
        assert needle in text, needle


def test_plots_from_results_json(tmp_path):
    results = render.load(FIXTURE)
    paths = figures.make_plots(results, str(tmp_path))
    expected = set(render.PLOTS.values()) - ({render.PLOTS["hardness"]} if not results.get("hardness") else set())
    assert {os.path.basename(p) for p in paths} == expected  # hardness.png only from results that have the check
    assert all(_is_png(p) for p in paths)


def test_readme_tables_name_their_command():
    text = readme.readme_tables(render.load(FIXTURE), "reports/digits/results.json")
    assert "python -m experiments.report --readme" in text and "reports/digits/results.json" in text
    assert "| claim | measure | equal epochs | equal time | verdict |" in text


def _readme_block(marker):
    """README's rendered block: from its `<!-- rendered from ... -->` comment to its closing "(...)" line."""
    text = open(os.path.join(ROOT, "README.md")).read()
    start = text.rindex("<!--", 0, text.index(marker))
    lines = []
    for line in text[start:].splitlines():
        lines.append(line)
        if line.startswith("("):
            break
    return "\n".join(lines)


@pytest.mark.parametrize(
    "marker, results, rendering",
    [
        ("`python -m experiments.report --readme`", "reports/digits/results.json",
         lambda r: readme.readme_tables(r, "reports/digits/results.json")),
        ("`python -m experiments.report --demo_table reports/demo/metrics.json`", "reports/demo/metrics.json",
         lambda r: readme.demo_table(r, "reports/demo/metrics.json")),
        ("--render_only --output_dir reports/small_batch --readme`", "reports/small_batch/results.json",
         lambda r: __import__("experiments.small_batch").small_batch.readme_table(r, "reports/small_batch/results.json")),
        ("`python -m experiments.demo_budget --render reports/demo/budget.json`", "reports/demo/budget.json",
         lambda r: __import__("experiments.demo_budget").demo_budget.render(r, "reports/demo/budget.json")),
    ],
)
def test_readme_numbers_are_rendered_from_committed_json(marker, results, rendering):
    path = os.path.join(ROOT, results)
    if not os.path.exists(path):
        pytest.skip(f"{results} is not committed")
    assert _readme_block(marker) == rendering(render.load(path)).rstrip()


def test_demo_table_from_the_demos_metrics():
    metrics = {
        "results": [{"method": "supcon", "test_top1": 0.98612, "train_seconds": 112.14}],
        "config": {"epochs": 60, "batch_size": 128, "image_size": 16, "seed": 0, "probe_epochs": 100},
    }
    text = readme.demo_table(metrics, "reports/demo/metrics.json")
    assert "`python -m experiments.report --demo_table reports/demo/metrics.json`" in text
    assert "| supcon | 0.9861 | 112.1 |" in text and "60 epochs each, batch 128, images 16x16, seed 0" in text


# ---------------------------------------------------------------------------
# The program.
# ---------------------------------------------------------------------------


def _program(module, *flags):
    """`python -m <module> *flags` through the program's entry in this process."""
    return run_binary_in_process(module.removeprefix("experiments."), *flags)


def test_importing_defines_no_flags():
    from absl import flags

    import experiments.digits_report  # noqa: F401
    import experiments.report.__main__  # noqa: F401

    assert "render_only" not in flags.FLAGS  # defined by entry() only: no clash with other binaries


def test_render_only_through_the_old_entry_point(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text(open(FIXTURE).read())
    result = _program("experiments.digits_report", "--render_only", "--noplots", f"--output_dir={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "REPORT.md").read_text() == open(GOLDEN).read()
    result = _program("experiments.report", "--readme", f"--output_dir={out}")
    assert result.returncode == 0 and "| claim | measure |" in result.stdout


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--render_only", "--readme"], "exclude each other"),
        (["--render_only", "--output_dir=/nonexistent/report"], "does not exist"),
        (["positional"], "unexpected positional"),
    ],
)
def test_program_errors_are_one_line(flags, message):
    result = _program("experiments.report", *flags)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and message in error_lines[0], result.stderr[-2000:]


# ---------------------------------------------------------------------------
# --quick end to end, in process, with the test-split guard.
# ---------------------------------------------------------------------------


@pytest.fixture
def split_reads(monkeypatch):
    """Records every digits split read, and where the final evaluation starts ("EVALUATION")."""
    from experiments.report import evaluate
    from supcon_tf import data

    events = []
    load_digits, load_source, evaluate_on_test = data.load_digits, data.load_source, evaluate.evaluate_on_test

    def recording_load_digits(split, **kwargs):
        events.append(split)
        return load_digits(split, **kwargs)

    def recording_load_source(config, split):
        events.append(f"source:{split}")
        return load_source(config, split)

    def marked_evaluate_on_test(*args, **kwargs):
        events.append("EVALUATION")
        return evaluate_on_test(*args, **kwargs)

    for module in (data, data.sources):  # the package's name and the one `data.splits` calls
        monkeypatch.setattr(module, "load_digits", recording_load_digits)
    for module in (data, data.splits):
        monkeypatch.setattr(module, "load_source", recording_load_source)
    monkeypatch.setattr(evaluate, "evaluate_on_test", marked_evaluate_on_test)
    return events


def test_split_guard_sees_a_test_read(split_reads):
    from supcon_tf import data

    data.load_digits("test")
    assert split_reads == ["test"]


@pytest.mark.slow
def test_quick_report_end_to_end_reads_the_test_split_once_at_the_end(tmp_path, split_reads):
    config = ReportConfig.quick(output_dir=str(tmp_path / "report"), work_dir=str(tmp_path / "work"))
    results = compute.run(config, command="python -m experiments.report --quick")
    # The guard: nothing touched the test split before the final evaluation, which read it exactly once.
    assert "EVALUATION" in split_reads
    before, after = split_reads[: split_reads.index("EVALUATION")], split_reads[split_reads.index("EVALUATION") :]
    assert "train" in before and not [e for e in before if "test" in e]
    assert [e for e in after if "test" in e] == ["source:test", "test"]  # one read, through data.load_source

    path = render.render(results, config.output_dir)
    text = open(path).read()
    for section in ("## Pre-registered protocol", "## Claims", "## Hyper-parameter search", "## Training to convergence",
                    "## Test results", "## Hyper-parameter stability", "## Caveats"):
        assert section in text, section
    for name in render.PLOTS.values():
        assert _is_png(tmp_path / "report" / name), name
    saved = json.loads((tmp_path / "report" / "results.json").read_text())  # strict JSON (no NaN)
    assert set(saved["verdicts"]) == {"accuracy", "robustness", "calibration", "stability"}
    assert saved["facts"]["data"]["test"] == 360 and saved["facts"]["machine"]["cpu_count"] == os.cpu_count()
    equal = saved["test"]["comparisons"]["equal_epochs"]
    assert [e["seed"] for e in equal["supcon"]] == [0, 1] and set(equal) == {"ce", "supcon", "simclr", "ce_probe"}
    for method in METHODS:
        for run in saved["comparisons"]["equal_epochs"]["runs"][method]:
            assert len(run["curves"]["knn_top1"]) == run["epochs"]  # one monitor record per epoch
        # Seed 0 at the selected settings is the tuning trial itself: read from its folder, not trained twice.
        assert saved["comparisons"]["equal_epochs"]["runs"][method][0]["model_dir"] == (
            saved["tuning"][method]["selected"]["model_dir"]
        )
    # Rendering again from the saved file gives the same report.
    assert render.report_markdown(render.load(str(tmp_path / "report" / "results.json"))) == text


def _image_folder(root, classes=4, per_class=150, size=8, seed=0):
    """A small learnable image folder: each class a bright bar at its own position, plus noise; train/ and test/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("test", per_class // 4)):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 60, (size, size), dtype=np.uint8)
                pixels[:, 2 * label : 2 * label + 2] = 220
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


@pytest.mark.slow
def test_the_report_runs_on_an_image_folder(tmp_path):
    data_dir = _image_folder(tmp_path / "images")
    out, work = tmp_path / "report", tmp_path / "work"
    result = _program(
        "experiments.report", "--quick", "--dataset=folder", f"--data_dir={data_dir}", "--image_size=8",
        "--channels=1", "--batch_size=64", "--noplots", f"--output_dir={out}", f"--work_dir={work}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = render.load(str(out / "results.json"))
    facts = results["facts"]["data"]
    assert facts["dataset"] == "folder" and facts["num_classes"] == 4 and facts["train"] == 600
    assert facts["test"] == 148  # 37 a class
    assert {m: results["hardness"]["methods"][m]["verdict"]["verdict"] in ("yes", "no", "inconclusive")
            for m in ("supcon", "simclr")} == {"supcon": True, "simclr": True}
    assert results["protocol"]["config"]["stages"]["supcon"]["data_dir"] == str(data_dir)
    text = (out / "REPORT.md").read_text()
    assert text.startswith("# SupCon on folder: a reproduction report")
    assert all(results["verdicts"][claim]["verdict"] for claim in results["verdicts"])


def test_report_data_flags_are_checked():
    result = _program("experiments.report", "--quick", "--data_dir=/tmp/x")
    assert result.returncode == 2 and "`--data_dir` / `--channels` are for --dataset folder" in result.stderr

