"""What the benchmark scripts share: the header of a results file, and writing its Markdown and JSON."""

import json
import os
import time


def run_header(script, argv, setting):
    """`Run <UTC time>, <setting>, load average after the run <x>` and the command line, as Markdown paragraphs."""
    return (
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {setting}, "
        f"load average after the run {os.getloadavg()[0]:.2f}\n\n"
        f"Command: `.venv/bin/python benchmarks/{script} {' '.join(argv)}`\n\n"
    )


def write_results(text, payload, out, indent=2):
    """Writes `text` to `out` and `payload` (unless None) to `out` with a `.json` suffix; nothing without `out`."""
    if not out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    if payload is not None:
        with open(os.path.splitext(out)[0] + ".json", "w") as f:
            json.dump(payload, f, indent=indent)
