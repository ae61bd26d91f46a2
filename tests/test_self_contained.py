"""The project refers to nothing outside its own tree: no file names a document a clone does not have."""

import os
import re
import subprocess

from helpers import ROOT

# Documents that exist only beside the project, never in a clone of it.
OUTSIDE = re.compile(r"\.\./shared|\bDESIGN\.md\b|\bSTYLE\.md\b")


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [n for n in names if n.endswith((".py", ".md", ".toml", ".txt", ".cfg", ".yml", ".yaml")) or "/" not in n]


def test_no_file_points_outside_the_repository():
    files = _tracked_text_files()
    assert any(name == "README.md" for name in files)  # the listing found the tree
    offenders = []
    for name in files:
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f:
            for number, line in enumerate(f, 1):
                if OUTSIDE.search(line) and name != "tests/test_self_contained.py":
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
