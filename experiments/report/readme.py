"""README.md's tables, rendered from committed JSON (each with the command that renders it).

    python -m experiments.report --readme                                  # from reports/digits/results.json
    python -m experiments.report --demo_table reports/demo/metrics.json    # `make demo`'s table
"""

from __future__ import annotations

from experiments.report.render import LABELS, _methods, _minutes, pm, table


def readme_tables(results, results_path="reports/digits/results.json"):
    """The tables README.md quotes, with the command that renders them."""
    lines = [
        f"<!-- rendered from {results_path} by `python -m experiments.report --readme` -->",
        "",
        table(
            ["claim", "measure", "equal epochs", "equal time", "verdict"],
            [
                (
                    entry["title"] if i == 0 else "", m["label"], m["verdict"],
                    _verdict_of(entry, m["label"], "equal_time") if m["comparison"] != "grid" else "(one grid)",
                    f"**{entry['verdict']}**" if i == 0 else "",
                )
                for entry in results["verdicts"].values()
                for i, m in enumerate(x for x in entry["measures"] if x["comparison"] in ("equal_epochs", "grid"))
            ],
        ),
        "",
    ]
    rows = []
    for method in _methods(results, "equal_epochs"):
        equal = results["test"]["comparisons"]["equal_epochs"][method]
        timed = results["test"]["comparisons"]["equal_time"].get(method)
        rows.append(
            (
                LABELS[method], pm([e["top1"] for e in equal]), pm([e["top1"] for e in timed]) if timed else "-",
                pm([e["mce"] for e in equal]), pm([e["relative_mce"] for e in equal]), pm([e["ece"] for e in equal], digits=2),
            )
        )
    lines.append(
        table(["method", "test top-1, equal epochs", "test top-1, equal time", "mCE", "relative mCE", "ECE"], rows)
    )
    timing = results["timing"]
    lines += [
        "",
        f"({len(results['protocol']['config']['seeds'])} seeds, mean ± std; wall time "
        f"{_minutes(timing['wall_seconds'])} at a mean load average of {results['facts']['load_average']['mean']:.1f} "
        f"on {results['facts']['machine']['usable_cpus']} cores.)",
    ]
    return "\n".join(lines)


def _verdict_of(entry, label, comparison):
    for measure in entry["measures"]:
        if measure["label"] == label and measure["comparison"] == comparison:
            return measure["verdict"]
    return "-"


def demo_table(metrics, path="reports/demo/metrics.json"):
    """README.md's `make demo` table, from the demo's metrics.json."""
    config = metrics["config"]
    rows = [(r["method"], f"{r['test_top1']:.4f}", f"{r['train_seconds']:.1f}") for r in metrics["results"]]
    return "\n".join(
        [
            f"<!-- rendered from {path} by `python -m experiments.report --demo_table {path}` -->",
            "",
            table(["method", "test top-1", "train time (s)"], rows),
            "",
            f"({config['epochs']} epochs each, batch {config['batch_size']}, images {config['image_size']}x"
            f"{config['image_size']}, seed {config['seed']}; the train time of SupCon and SimCLR includes the "
            f"{config['probe_epochs']}-epoch linear probe on cached features.)",
        ]
    )
