r"""The digits reproduction report, as a program.

    python -m experiments.report                 # the committed report: reports/digits/ (about 55 min on 2 cores)
    python -m experiments.report --quick         # a few minutes: runs/digits_report_quick/report/
    python -m experiments.report --render_only   # REPORT.md and the plots again, from reports/digits/results.json
    python -m experiments.report --readme        # print README.md's tables, from reports/digits/results.json
    python -m experiments.report --demo_table reports/demo/metrics.json   # README.md's `make demo` table
    python -m experiments.report --dataset folder --data_dir ~/my_images --image_size 32   # your own data

`python -m experiments.digits_report` is the same program. Training runs go
to `--work_dir` (resumable: run the same command again after an
interruption; `--overwrite` starts afresh there).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys

from experiments import flagging
from experiments.flagging import option

PROGRAM = "python -m experiments.report"


@dataclasses.dataclass(frozen=True)
class ProgramOptions:
    """The program's flags: which `ReportConfig` (mode and folders), and what to do with it."""

    quick: bool = option(False, "The few-minute version (2 seeds, 3-epoch runs) that the end-to-end test runs.")
    output_dir: str | None = option(None, "Where results.json, REPORT.md and the plots go (default: by mode).")
    work_dir: str | None = option(None, "Where the training runs go (default: by mode).")
    overwrite: bool = option(False, "Clear --work_dir first (otherwise finished runs are reused, others resume).")
    render_only: bool = option(False, "Only render REPORT.md and the plots from --output_dir/results.json.")
    readme: bool = option(False, "Only print README.md's report tables from --output_dir/results.json.")
    plots: bool = option(True, "Draw the PNG plots.")
    demo_table: str | None = option(None, "Only print README.md's `make demo` table from this metrics.json.")
    dataset: str = option("digits", "The data: digits (bundled), a TFDS name, or folder (with --data_dir).")
    data_dir: str | None = option(None, "With --dataset folder: the root holding train/<class>/ and test/<class>/.")
    image_size: int | None = option(None, "Image size of the runs (default: 8 for digits, 32 otherwise).")
    channels: int | None = option(None, "Image channels for an image folder (default: 3).")
    batch_size: int | None = option(None, "Batch size of every stage (default: the digits presets'); small data sets "
                                          "need a batch no larger than their validation split.")

    def __post_init__(self):
        if self.render_only and self.readme:
            raise ValueError("`--render_only` and `--readme` exclude each other: pass one")
        if self.dataset == "digits" and (self.data_dir or self.channels):
            raise ValueError("`--data_dir` / `--channels` are for --dataset folder (or TFDS), not digits")

    def data(self):
        """The RunConfig data settings over the digits ones, or None for digits."""
        if self.dataset == "digits" and not self.image_size and not self.batch_size:
            return None
        values = {"dataset": self.dataset, "image_size": self.image_size or (8 if self.dataset == "digits" else 32)}
        if self.batch_size:
            values["batch_size"] = self.batch_size
        if self.data_dir:
            values["data_dir"] = self.data_dir
        if self.channels:
            values["channels"] = self.channels
        return values

    def report_config(self):
        """The `ReportConfig` of the mode and data, with the folders given (a dataset other than digits gets its own
        default folders, `runs/<dataset>_report/`)."""
        from experiments.report.config import ReportConfig

        data = self.data()
        config = ReportConfig.quick(data=data) if self.quick else ReportConfig.full(data=data)
        changes = {name: getattr(self, name) for name in ("output_dir", "work_dir") if getattr(self, name)}
        if self.dataset != "digits":
            root = os.path.join("runs", f"{self.dataset}_report{'_quick' if self.quick else ''}")
            changes.setdefault("output_dir", os.path.join(root, "report"))
            changes.setdefault("work_dir", os.path.join(root, "work"))
        return config.replace(**changes) if changes else config


def define_flags():
    """Defines the flags; only when run as a program (importing the package defines none)."""
    flagging.define(ProgramOptions)


def main():
    options = flagging.from_flags(ProgramOptions)  # the one place where flags become a `ReportConfig`
    config = options.report_config()
    from experiments.report import compute, readme, render

    if options.demo_table:
        if not os.path.exists(options.demo_table):
            raise FileNotFoundError(f"no demo metrics: {options.demo_table} does not exist")
        print(readme.demo_table(render.load(options.demo_table), options.demo_table))
        return 0
    _quiet_tensorflow()
    results_path = os.path.join(config.output_dir, compute.RESULTS_FILE)
    if options.readme or options.render_only:
        if not os.path.exists(results_path):
            raise FileNotFoundError(f"no results to render: {results_path} does not exist")
        results = render.load(results_path)
        if options.readme:
            print(readme.readme_tables(results, results_path))
            return 0
        path = render.render(results, config.output_dir, plots=options.plots)
        print(f"wrote {path}")
        return 0
    command = " ".join([PROGRAM, *(shlex.quote(a) for a in sys.argv[1:])])
    results = compute.run(config, command=command, overwrite=options.overwrite)
    path = render.render(results, config.output_dir, plots=options.plots)
    for claim, outcome in results["verdicts"].items():
        print(f"{claim}: {outcome['verdict']}")
    print(f"wrote {path}")
    return 0


def _quiet_tensorflow():
    """No AutoGraph "could not transform" notices (the probe's feature lambda) in the report's log."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf.autograph.set_verbosity(0)


def entry():
    define_flags()
    flagging.run_binary(main)


if __name__ == "__main__":
    entry()
