"""experiments/demo_budget.py: the ranking rule and the table, on hand-made results; its flags' errors."""


from experiments import demo_budget
from helpers import run_binary_in_process



def _run(epochs, seed, supcon, simclr, ce, wall=10.0):
    results = [{"method": m, "test_top1": v, "train_seconds": 1.0} for m, v in
               (("supcon", supcon), ("simclr", simclr), ("ce", ce))]
    return {"epochs": epochs, "seed": seed, "wall_seconds": wall, "results": results}


RESULTS = {
    "image_size": 8,
    "machine": {"cpu_count": 2, "load_average_before": 0.5, "load_average_after": 1.5},
    "runs": [
        _run(10, 0, 0.99, 0.97, 0.95, wall=20.0), _run(10, 1, 0.98, 0.96, 0.97, wall=30.0),  # seed 1: CE > SimCLR
        _run(20, 0, 0.99, 0.98, 0.97), _run(20, 1, 0.99, 0.98, 0.96),
        _run(40, 0, 0.99, 0.98, 0.98), _run(40, 1, 0.99, 0.985, 0.98),  # seed 0: a tie is not a ranking
    ],
}


def test_summary_means_and_ranking_per_budget():
    table = demo_budget.summary(RESULTS)
    assert list(table) == [10, 20, 40]
    assert table[10]["ranked"] == [True, False] and table[20]["ranked"] == [True, True]
    assert table[40]["ranked"] == [False, True]
    assert table[10]["supcon"] == [99.0, 98.0] and table[10]["wall_seconds"] == [20.0, 30.0]
    assert demo_budget.smallest_ranked_budget(RESULTS) == 20


def test_smallest_ranked_budget_is_none_when_no_budget_ranks_on_every_seed():
    results = dict(RESULTS, runs=[r for r in RESULTS["runs"] if r["epochs"] != 20])
    assert demo_budget.smallest_ranked_budget(results) is None
    assert "ranks supcon > simclr > ce: none of the grid" in demo_budget.render(results)


def test_render_names_its_command_and_shows_mean_std_and_counts():
    text = demo_budget.render(RESULTS, "reports/demo/budget.json")
    assert "`python -m experiments.demo_budget --render reports/demo/budget.json`" in text
    assert "| 10 | 98.5 +- 0.5 | 96.5 +- 0.5 | 96.0 +- 1.0 | 1 of 2 | 25 |" in text
    assert "| 20 | 99.0 +- 0.0 | 98.0 +- 0.0 | 96.5 +- 0.5 | 2 of 2 | 10 |" in text
    assert "on 2 CPUs, load average 0.5 before and 1.5 after" in text and ": 20.)" in text


def test_bad_grid_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "budget.json"
    result = run_binary_in_process(
        "demo_budget", "--epochs=0,10", f"--output={out}", f"--work_dir={tmp_path / 'work'}"
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]  # (TensorFlow's start-up log lines come before it)
    assert last == "demo_budget: error: `epochs` must be an int >= 1, received: epochs=0"
    assert not out.exists() and not (tmp_path / "work").exists()
