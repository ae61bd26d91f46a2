"""Writes a benchmark's Markdown table and its numbers as JSON next to it (shared by the benchmark scripts)."""

import json
import os


def write_results(text, payload, out, indent=2):
    """Writes `text` to `out` and `payload` to `out` with a `.json` suffix; does nothing without `out`."""
    if not out:
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump(payload, f, indent=indent)
