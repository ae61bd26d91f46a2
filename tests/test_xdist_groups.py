"""The test runner's grouping that `make test-slow` relies on (`--dist loadgroup`).

Tests that share one expensive run carry an `xdist_group` mark (tests/test_accelerator_check.py,
tests/test_multiworker.py, tests/test_cluster.py) so that one worker makes the run. pytest-xdist 3.8 silently
stops grouping under pytest 9.2 (pytest-xdist issue #1386: the group goes into a node-id field that pytest 9.2 no
longer reads), which is why requirements.txt pins pytest 9.1.1; this test fails if an upgrade breaks it again.
"""

import sys

from helpers import run_command

TOY = """
import os

import pytest


@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("index", range(4))
def test_grouped(index):
    print("WORKER", os.environ["PYTEST_XDIST_WORKER"])


@pytest.mark.parametrize("index", range(4))
def test_free(index):
    pass
"""


def test_loadgroup_keeps_a_group_on_one_worker(tmp_path):
    for name in ("test_first.py", "test_second.py"):
        (tmp_path / name).write_text(TOY)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the project's settings
    result = run_command(
        [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v", "-p", "no:cacheprovider", "-s",
         str(tmp_path)],
        cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    grouped = [line for line in result.stdout.splitlines() if "test_grouped" in line and "PASSED" in line]
    assert len(grouped) == 8, result.stdout[-3000:]
    assert all(line.rstrip().endswith("@shared") for line in grouped), grouped  # the group reached the node ids
    workers = {line.split("]")[0] + "]" for line in grouped}  # "[gw0]" / "[gw1]"
    assert len(workers) == 1, grouped


def test_every_module_with_a_shared_fixture_is_one_group():
    """A module- or session-scoped fixture in a test module is made once only if its tests stay on one worker: such a
    module carries `pytestmark = pytest.mark.xdist_group(...)`, or marks the tests that use it with one group
    (tests/test_accelerator_check.py), or shares what it makes between workers through `helpers.session_folder`
    (tests/test_run_lifecycle.py, whose tests are spread). Else each worker would make it again."""
    import ast
    import glob
    import os

    from helpers import ROOT

    unmarked = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
        tree = ast.parse(open(path).read())
        shared = any(
            isinstance(keyword.value, ast.Constant) and keyword.arg == "scope" and keyword.value.value in ("module", "session")
            for node in ast.walk(tree) if isinstance(node, ast.Call) for keyword in node.keywords
        )
        source = ast.unparse(tree)
        grouped = "pytest.mark.xdist_group(" in source or "session_folder(" in source
        if shared and not grouped:
            unmarked.append(os.path.basename(path))
    assert unmarked == [], unmarked
