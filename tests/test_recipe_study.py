"""The recipe study: its choice rule, its table, and one tiny real grid on the validation split."""

import json
import os

import pytest

from experiments import recipe_study


def _point(warmup, temperature, mean):
    return {"warmup_epochs": warmup, "temperature": temperature, "mean": mean}


def test_the_rule_takes_the_best_mean_then_fewer_warmup_then_the_presets_temperature():
    points = [_point(0, 0.1, 0.90), _point(2, 0.1, 0.95), _point(4, 0.05, 0.95), _point(2, 0.05, 0.95)]
    assert recipe_study.choose(points, 0.1) == _point(2, 0.1, 0.95)
    assert recipe_study.choose(points, 0.05) == _point(2, 0.05, 0.95)
    assert recipe_study.choose([_point(0, None, 0.90001), _point(1, None, 0.90004)], None)["warmup_epochs"] == 0
    assert recipe_study.choose([_point(0, None, 0.90), _point(1, None, 0.91)], None)["warmup_epochs"] == 1


def test_bad_grids_are_refused():
    with pytest.raises(ValueError, match="`--methods` must be among"):
        recipe_study.StudyConfig(methods=("dino",))
    with pytest.raises(ValueError, match="`--seeds` must be a non-empty list"):
        recipe_study.StudyConfig(seeds=())
    with pytest.raises(ValueError, match="warmup_epochs"):
        recipe_study.StudyConfig(methods=("ce",), warmup_epochs=(50,))  # more than the preset's 10 epochs


@pytest.mark.slow  # the study end to end: 10 s of a worker
def test_a_tiny_study_scores_every_point_on_validation_and_writes_its_table(tmp_path):
    config = recipe_study.StudyConfig(
        methods=("ce",), warmup_epochs=(0, 3), seeds=(0,), work_dir=str(tmp_path / "work"),
        output_dir=str(tmp_path / "out"),
    )
    results = recipe_study.run(config)
    study = results["methods"]["ce"]
    assert [p["warmup_epochs"] for p in study["points"]] == [0, 3]
    for point in study["points"]:
        assert 0.0 < point["per_seed"][0] <= 1.0 and point["collapsed"] == 0
    best = max(study["points"], key=lambda p: p["mean"])
    assert study["chosen"]["mean"] == best["mean"]
    with open(tmp_path / "out" / "results.json") as f:
        assert json.load(f)["rule"] == recipe_study.RULE
    table = open(tmp_path / "out" / "results.md").read()
    assert table.count("| ce |") == 2 and "| yes |" in table
