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


def export_library(revision, folder=None):
    """Extracts `supcon_tf` of the git `revision` into `folder` (default: a temporary one, removed at exit).

    Returns the folder, to put first on `sys.path` (or `PYTHONPATH`) so that `import supcon_tf` reads that
    revision. Raises ValueError naming `revision` when git cannot read it.
    """
    import atexit
    import io
    import shutil
    import subprocess
    import tarfile
    import tempfile

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    archive = subprocess.run(["git", "archive", revision, "supcon_tf"], cwd=root, capture_output=True)
    if archive.returncode:
        raise ValueError(f"`revision` must name a commit of this repository, received: revision={revision!r}")
    if folder is None:
        folder = tempfile.mkdtemp(prefix="supcon_tf_at_rev_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return folder
