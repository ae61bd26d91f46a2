"""docs/architecture.md stays true where a name or a number can drift: its module map against the tree."""

import os
import re

from helpers import ROOT

DOC = open(os.path.join(ROOT, "docs", "architecture.md")).read()
MAP = DOC[DOC.index("## Module map"):DOC.index("## Run folder")]
ROWS = [line for line in MAP.splitlines() if line.startswith("| `")]


def _modules(folder):
    return sorted(
        name[:-3] for name in os.listdir(os.path.join(ROOT, folder))
        if name.endswith(".py") and name != "__init__.py"
    )


def _row(first_cell):
    rows = [row for row in ROWS if row.split("|")[1].strip() == f"`{first_cell}`"]
    assert rows, f"docs/architecture.md's module map has no row for {first_cell}"
    return rows[0]


def test_every_path_the_map_names_exists():
    for row in ROWS:
        first = row.split("|")[1]
        named = re.findall(r"`([^`]+)`", first)
        folder = os.path.dirname(named[0])
        for name in named:
            path = name if "/" in name else os.path.join(folder, name)
            assert os.path.exists(os.path.join(ROOT, path)), f"docs/architecture.md names {path}, which does not exist"


def test_every_module_and_package_is_in_the_map():
    first_cells = " ".join(row.split("|")[1] for row in ROWS)
    named = set(re.findall(r"`([^`]+)`", first_cells))
    for folder in ("supcon_tf", "experiments"):
        for module in _modules(folder):
            path = f"{folder}/{module}.py"
            assert path in named or f"{module}.py" in named, f"{path} is missing from docs/architecture.md's module map"
        for entry in sorted(os.listdir(os.path.join(ROOT, folder))):
            if os.path.isfile(os.path.join(ROOT, folder, entry, "__init__.py")):
                assert f"{folder}/{entry}/" in named, f"package {folder}/{entry}/ is missing from the module map"


def test_each_package_row_names_its_modules():
    packages = ["supcon_tf/losses", "supcon_tf/augment", "supcon_tf/data", "supcon_tf/encoders", "supcon_tf/models",
                "experiments/report"]
    for package in packages:
        row = _row(package + "/")
        described = row.split("|")[2]
        for module in _modules(package):
            if module.startswith("_") and package != "experiments/report":
                continue  # private helpers need not be named
            assert f"`{module}`" in described, f"docs/architecture.md's row for {package}/ does not name `{module}`"


def test_the_line_count_it_quotes_is_the_files():
    quoted = re.search(r"\(experiments/pretrain\.py: (\d+) lines\)", DOC)
    assert quoted, "docs/architecture.md no longer quotes experiments/pretrain.py's length"
    with open(os.path.join(ROOT, "experiments", "pretrain.py")) as f:
        assert int(quoted.group(1)) == sum(1 for _ in f)
