r"""How `make demo`'s budget was chosen: test top-1 of the three methods against pre-training epochs.

Runs the demo program (`python -m experiments.demo`, one process per run,
as `make demo` runs it) for every (epochs, seed) of the grid and writes
`--output`, a JSON file with every run's rows, the wall time of each demo
process, and facts about the machine measured while it ran (CPU count, load
average). `--render` prints the Markdown table README.md quotes, from that file
only.

    python -m experiments.demo_budget                                  # the grid: reports/demo/budget.json
    python -m experiments.demo_budget --render reports/demo/budget.json

Finished runs under `--work_dir` are reused (run the same command again
after an interruption); the demo's own run folders resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from experiments import flagging
from experiments.demo import METHODS  # SupCon, SimCLR, CE: the order the ranking checks
from experiments.flagging import option



@dataclasses.dataclass(frozen=True)
class BudgetConfig:
    """The grid (every point a demo config, validated by `experiments.demo.DemoConfig`) and the files."""

    epochs: tuple[int, ...] = option((10, 20, 40, 80), "Pre-training (and CE) epochs to try.")
    seeds: tuple[int, ...] = option((0, 1, 2), "Seeds; every budget runs once per seed.")
    image_size: int = option(8, "The demo's --image_size.")
    work_dir: str = option("runs/demo_budget", "Where the demo runs go.")
    output: str = option("reports/demo/budget.json", "The results file to write.")
    render: str | None = option(None, "Only print the Markdown table from this results file.")

    def __post_init__(self):
        if self.render:
            return  # the grid is not used
        for name in ("epochs", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"`--{name}` must be a non-empty list, received: --{name}=")
        from experiments.demo import DemoConfig

        for epochs in self.epochs:
            for seed in self.seeds:
                DemoConfig(stage=dict(epochs=epochs, seed=seed, image_size=self.image_size, verbose=0))


def _write_json(path, payload):
    from supcon_tf.checkpointing import write_json_atomically  # (imports TensorFlow: not for --render)

    write_json_atomically(path, payload, indent=2)


def _one_run(work_dir, epochs, seed, image_size):
    """One demo process; returns `{"epochs", "seed", "wall_seconds", "results": [...]}`."""
    run_dir = os.path.join(work_dir, f"e{epochs}_s{seed}")
    record = os.path.join(run_dir, "budget_run.json")
    if os.path.exists(record):
        with open(record) as f:
            return json.load(f)
    command = [
        sys.executable, "-m", "experiments.demo", f"--output_dir={run_dir}", f"--epochs={epochs}",
        f"--seed={seed}", f"--image_size={image_size}", "--verbose=0",
    ]
    start = time.time()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - start
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    row = {
        "epochs": epochs, "seed": seed, "wall_seconds": round(wall, 1), "load_average_after": os.getloadavg()[0],
        "results": metrics["results"], "config": metrics["config"],
    }
    _write_json(record, row)
    return row


def run(epochs_grid, seeds, image_size, work_dir, output):
    """Runs the grid; writes and returns the results dict."""
    load_before = os.getloadavg()[0]
    runs = []
    for epochs in epochs_grid:
        for seed in seeds:
            print(f"[budget] epochs {epochs} seed {seed}", flush=True)
            runs.append(_one_run(work_dir, epochs, seed, image_size))
    results = {
        "command": "python -m experiments.demo_budget " + " ".join(sys.argv[1:]),
        "image_size": image_size,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg()[0],
        },
        "runs": runs,
    }
    _write_json(output, results)
    return results


def summary(results):
    """`{epochs: {"wall_seconds": [..], "ranked": [bool, ..], method: [top1 %, ...]}}` over seeds.

    `ranked`: per seed, whether test top-1 orders the methods strictly as `METHODS` (SupCon > SimCLR > CE).
    """
    table = {}
    for entry in results["runs"]:
        row = table.setdefault(entry["epochs"], {"wall_seconds": [], "ranked": []})
        row["wall_seconds"].append(entry["wall_seconds"])
        top1 = {result["method"]: 100.0 * result["test_top1"] for result in entry["results"]}
        for method, value in top1.items():
            row.setdefault(method, []).append(value)
        ordered = [top1.get(method) for method in METHODS]
        row["ranked"].append(None not in ordered and all(a > b for a, b in zip(ordered, ordered[1:])))
    return dict(sorted(table.items()))


def smallest_ranked_budget(results):
    """The fewest epochs at which every seed ranks SupCon > SimCLR > CE strictly, or None."""
    return next((epochs for epochs, row in summary(results).items() if all(row["ranked"])), None)


def render(results, path="reports/demo/budget.json"):
    """The Markdown table README.md quotes: mean +- std test top-1 per method, the ranking, the demo's wall time."""
    table = summary(results)
    seeds = sorted({entry["seed"] for entry in results["runs"]})
    machine = results["machine"]
    lines = [
        f"<!-- rendered from {path} by `python -m experiments.demo_budget --render {path}` -->",
        "",
        "| epochs | " + " | ".join(f"{m} test top-1 (%)" for m in METHODS)
        + " | seeds ranking supcon > simclr > ce | demo wall time (s) |",
        "|---" * (len(METHODS) + 3) + "|",
    ]
    for epochs, row in table.items():
        cells = [f"{np.mean(row[m]):.1f} +- {np.std(row[m]):.1f}" if m in row else "-" for m in METHODS]
        cells.append(f"{sum(row['ranked'])} of {len(row['ranked'])}")
        lines.append(f"| {epochs} | " + " | ".join(cells) + f" | {np.mean(row['wall_seconds']):.0f} |")
    smallest = smallest_ranked_budget(results)
    lines += [
        "",
        f"(images {results['image_size']}x{results['image_size']}, seeds {', '.join(map(str, seeds))}: mean +- std "
        f"over seeds; one demo process per run on {machine['cpu_count']} CPUs, load average "
        f"{machine['load_average_before']:.1f} before and {machine['load_average_after']:.1f} after the grid, "
        "which inflates the wall times. Fewest epochs at which every seed ranks supcon > simclr > ce: "
        f"{smallest if smallest is not None else 'none of the grid'}.)",
    ]
    return "\n".join(lines)


def main():
    config = flagging.from_flags(BudgetConfig)
    if config.render:
        with open(config.render) as f:
            print(render(json.load(f), config.render))
        return 0
    results = run(config.epochs, config.seeds, config.image_size, config.work_dir, config.output)
    print(render(results, config.output))
    return 0


def entry():
    flagging.define(BudgetConfig)
    flagging.run_binary(main)


if __name__ == "__main__":
    entry()
