r"""Writes a run's training curves as a PNG, from its training_log.csv.

    supcon-plot runs/digits_supcon                      # -> runs/digits_supcon/training_curves.png
    supcon-plot runs/digits_supcon --output curves.png --overwrite

One panel per logged metric (loss, mean_cosine, online_top1, ...), with the
training value per epoch and, where the run had validation
(`--validation_fraction`), the `val_` value beside it; epochs are numbered
from 1, as Keras shows them. Needs matplotlib (the `experiments` extra:
`pip install -e ".[experiments]"`); without it the binary says so in one line
and exits with status 2. An existing output is replaced only with
`--overwrite`.
"""

import csv
import dataclasses
import math
import os
import sys

from experiments import flagging
from experiments.flagging import option

CSV_FILE = "training_log.csv"
DEFAULT_OUTPUT = "training_curves.png"


@dataclasses.dataclass(frozen=True)
class PlotConfig:
    """Where the curves go; validated at construction (before matplotlib loads)."""

    output: str | None = option(None, f"PNG file to write (default: RUN/{DEFAULT_OUTPUT}).")
    overwrite: bool = option(False, "Replace an existing --output.")


def curves(csv_path):
    """`{metric: {"train": [values], "validation": [values]}}` of a training_log.csv; "NA" cells read as NaN.

    A metric's panel has "validation" only when its `val_` column holds a number.
    """
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{csv_path} has no epoch rows yet: nothing to plot")

    def column(name):
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):  # "NA", empty or a torn last row
                values.append(math.nan)
        return values

    names = [name for name in rows[0] if name != "epoch" and not name.startswith("val_")]
    panels = {}
    for name in names:
        lines = {"train": column(name)}
        validation = column(f"val_{name}") if f"val_{name}" in rows[0] else []
        if any(not math.isnan(value) for value in validation):
            lines["validation"] = validation
        panels[name] = lines
    return panels


def main(run):
    try:
        import matplotlib  # noqa: F401  (an optional extra)
    except ImportError:
        raise ValueError(
            "supcon-plot needs matplotlib, which is not installed: pip install matplotlib (or the project's "
            "'experiments' extra)"
        ) from None
    config = flagging.from_flags(PlotConfig)
    csv_path = os.path.join(run, CSV_FILE)
    if not os.path.isdir(run):
        what = "a file" if os.path.exists(run) else "missing"
        raise FileNotFoundError(f"`RUN` must be a run folder, received: {run} ({what})")
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"`RUN` {run} has no {CSV_FILE}: not a run folder, or no epoch finished yet")
    output = config.output or os.path.join(run, DEFAULT_OUTPUT)
    if not output.endswith(".png"):
        raise ValueError(f"`output` must end with .png, received: --output {output}")
    if os.path.lexists(output) and not config.overwrite:
        raise FileExistsError(f"`output` {output} exists: pass --overwrite to replace it")
    panels = curves(csv_path)

    from experiments.report import plots

    # Written beside the output, then renamed: a reader never sees half a PNG.
    temporary = os.path.join(os.path.dirname(os.path.abspath(output)), f".tmp-{os.getpid()}-{os.path.basename(output)}")
    try:
        plots.plot_training_curves(panels, temporary, title=os.path.basename(os.path.abspath(run)))
        os.replace(temporary, output)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    epochs = len(next(iter(panels.values()))["train"])
    print(f"wrote {output}: {', '.join(panels)} over {epochs} epoch{'s' if epochs != 1 else ''}")
    return 0


def entry():
    flagging.define(PlotConfig)
    flagging.run_binary(main, positional="RUN")


if __name__ == "__main__":
    sys.exit(entry())
