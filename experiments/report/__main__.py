r"""The digits reproduction report, as a program.

    python -m experiments.report                 # the committed report: reports/digits/ (about 40 min on 2 cores)
    python -m experiments.report --quick         # a few minutes: runs/digits_report_quick/report/
    python -m experiments.report --render_only   # REPORT.md and the plots again, from reports/digits/results.json
    python -m experiments.report --readme        # print README.md's tables, from reports/digits/results.json
    python -m experiments.report --demo_table reports/demo/metrics.json   # README.md's `make demo` table

`python -m experiments.digits_report` is the same program. Training runs go
to `--work_dir` (resumable: run the same command again after an
interruption; `--overwrite` starts afresh there).
"""

from __future__ import annotations

import os
import shlex
import sys

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
PROGRAM = "python -m experiments.report"


def define_flags():
    """Defines the flags; only when run as a program (importing the package defines none)."""
    flags.DEFINE_bool("quick", False, "The few-minute version (2 seeds, 3-epoch runs) that the end-to-end test runs.")
    flags.DEFINE_string("output_dir", None, "Where results.json, REPORT.md and the plots go (default: by mode).")
    flags.DEFINE_string("work_dir", None, "Where the training runs go (default: by mode).")
    flags.DEFINE_bool("overwrite", False, "Clear --work_dir first (otherwise finished runs are reused, others resume).")
    flags.DEFINE_bool("render_only", False, "Only render REPORT.md and the plots from --output_dir/results.json.")
    flags.DEFINE_bool("readme", False, "Only print README.md's report tables from --output_dir/results.json.")
    flags.DEFINE_bool("plots", True, "Draw the PNG plots.")
    flags.DEFINE_string("demo_table", None, "Only print README.md's `make demo` table from this metrics.json.")


def config_from_flags():
    """The one place where flags become a `ReportConfig`."""
    from experiments.report.config import ReportConfig

    config = ReportConfig.quick() if FLAGS.quick else ReportConfig.full()
    changes = {name: FLAGS[name].value for name in ("output_dir", "work_dir") if FLAGS[name].value}
    return config.replace(**changes) if changes else config


def main(argv):
    if len(argv) > 1:
        print(f"report: error: unexpected positional arguments: {argv[1:]}", file=sys.stderr)
        return 2
    try:
        config = config_from_flags()
        if FLAGS.render_only and FLAGS.readme:
            raise ValueError("`--render_only` and `--readme` exclude each other: pass one")
    except ValueError as error:
        print(f"report: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    from experiments.report import compute, readme, render

    if FLAGS.demo_table:
        if not os.path.exists(FLAGS.demo_table):
            print(f"report: error: no demo metrics: {FLAGS.demo_table} does not exist", file=sys.stderr)
            return 2
        print(readme.demo_table(render.load(FLAGS.demo_table), FLAGS.demo_table))
        return 0
    _quiet_tensorflow()
    results_path = os.path.join(config.output_dir, compute.RESULTS_FILE)
    if FLAGS.readme or FLAGS.render_only:
        if not os.path.exists(results_path):
            print(f"report: error: no results to render: {results_path} does not exist", file=sys.stderr)
            return 2
        results = render.load(results_path)
        if FLAGS.readme:
            print(readme.readme_tables(results, results_path))
            return 0
        path = render.render(results, config.output_dir, plots=FLAGS.plots)
        print(f"wrote {path}")
        return 0
    command = " ".join([PROGRAM, *(shlex.quote(a) for a in sys.argv[1:])])
    try:
        results = compute.run(config, command=command, overwrite=FLAGS.overwrite)
    except ValueError as error:
        print(f"report: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    path = render.render(results, config.output_dir, plots=FLAGS.plots)
    for claim, entry in results["verdicts"].items():
        print(f"{claim}: {entry['verdict']}")
    print(f"wrote {path}")
    return 0


def _quiet_tensorflow():
    """No AutoGraph "could not transform" notices (the probe's feature lambda) in the report's log."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    tf.autograph.set_verbosity(0)


def entry():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    entry()
