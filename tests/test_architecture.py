"""The house rules a reader can check from the source alone: no import cycles, private Keras / TensorFlow API only
in supcon_tf/_keras_compat.py, no test-only argument in the library, one ROOT in the tests.

Everything here reads the source with `ast` (nothing is imported), so it runs in well under a second.
"""

import ast
import inspect
import os
import re

from helpers import ROOT

PACKAGES = ("supcon_tf", "experiments")
COMPAT = os.path.join("supcon_tf", "_keras_compat.py")
# Private names of the standard library's and Python's own public API (namedtuple methods, os._exit).
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_exit"}


def _module_files():
    """`{dotted module name: path relative to ROOT}` of every module of the library and the experiments."""
    modules = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    relative = os.path.relpath(os.path.join(folder, name), ROOT)
                    dotted = relative[:-3].replace(os.sep, ".")
                    modules[dotted[: -len(".__init__")] if dotted.endswith(".__init__") else dotted] = relative
    return modules


MODULES = _module_files()
TREES = {name: ast.parse(open(os.path.join(ROOT, path)).read(), path) for name, path in MODULES.items()}


def _project_module(name):
    """The project module `name` refers to (itself, or the package it is a name in), or None for other code."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def import_graph():
    """`{module: set of project modules it imports}`, every import statement (module level or inside functions)."""
    graph = {}
    for module, tree in TREES.items():
        is_package = MODULES[module].endswith("__init__.py")
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(_project_module(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    package = module if is_package else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = ".".join(part for part in (package, node.module) if part)
                for alias in node.names:  # `from package import module` imports that module
                    full = f"{base}.{alias.name}"
                    imported.add(full if full in MODULES else _project_module(base))
        graph[module] = imported - {None, module}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted, in a sorted list."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def test_cycle_finder_finds_a_cycle_and_the_project_has_none():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert graph["supcon_tf.distribute"] >= {"supcon_tf._keras_compat"}  # the finder sees real imports
    assert "experiments.report.figures" in graph["experiments.report.render"]
    assert cycles(graph) == [], f"import cycles between modules: {cycles(graph)}"


def _project_private_names():
    """Every `_name` the project defines itself: functions, classes, assigned names and attributes, arguments."""
    names = set()
    for tree in TREES.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add((node.asname or node.name).rpartition(".")[2])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # self.__dict__["_name"] = ...
                names.add(node.value)
    return {name for name in names if re.fullmatch(r"_[A-Za-z]\w*", name)}


def _private_sites(tree, path, own):
    """The private-API sites of one parsed module (`private_api_sites`)."""
    sites = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            if re.match(r"(tensorflow\.python|keras\.src)(\.|$)", name):
                sites.append(f"{path}:{node.lineno}: import {name}")
        if isinstance(node, ast.Attribute) and re.fullmatch(r"_[A-Za-z]\w*", node.attr) and node.attr not in own:
            sites.append(f"{path}:{node.lineno}: .{node.attr}")
    return sites


def private_api_sites():
    """`["path:line: what"]`: private Keras / TensorFlow (or other outside) API used outside _keras_compat.py.

    An import of `tensorflow.python` or `keras.src`, or an attribute `x._name` (not a dunder) whose name the
    project does not define itself.
    """
    own = _project_private_names() | PUBLIC_UNDERSCORE
    return sorted(
        site for module, tree in TREES.items() if MODULES[module] != COMPAT
        for site in _private_sites(tree, MODULES[module], own)
    )


def test_private_keras_and_tensorflow_api_only_in_keras_compat():
    assert private_api_sites() == [], (
        "private Keras / TensorFlow API outside supcon_tf/_keras_compat.py (move it there, with a guard test in "
        f"tests/test_keras_compat.py): {private_api_sites()}"
    )


def test_the_private_api_finder_sees_private_imports_and_attributes():
    tree = ast.parse("n = optimizer._get_variable_index(v) + self._own\nfrom keras.src import ops\nos._exit(0)\n")
    assert sorted(_private_sites(tree, "m.py", {"_own"} | PUBLIC_UNDERSCORE)) == [
        "m.py:1: ._get_variable_index", "m.py:2: import keras.src",
    ]


def test_library_functions_take_no_test_only_argument():
    """Faults are injected through `supcon_tf._faults`' hook, never an argument (Keras' tests stop `fit` from a
    callback the test installs)."""
    import importlib

    offenders = []
    for module in (m for m in MODULES if m.startswith("supcon_tf")):
        loaded = importlib.import_module(module)
        for _, member in inspect.getmembers(loaded, lambda m: inspect.isfunction(m) or inspect.isclass(m)):
            if getattr(member, "__module__", None) != module:
                continue
            functions = [member] if inspect.isfunction(member) else [
                f for f in vars(member).values() if inspect.isfunction(f)
            ]
            for function in functions:
                for name in inspect.signature(function).parameters:
                    if re.search(r"(^|_)(fault|faults|inject\w*)(_|$)", name):
                        offenders.append(f"{module}.{function.__qualname__}({name}=)")
    assert offenders == [], offenders


def test_tests_define_the_repository_root_once():
    definitions = []
    for name in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if name.endswith(".py") and name not in ("helpers.py", "test_architecture.py"):
            with open(os.path.join(ROOT, "tests", name)) as f:
                text = f.read()
            if re.search(r"^ROOT\s*=", text, re.M) or "dirname(os.path.dirname(os.path.abspath(__file__)))" in text:
                definitions.append(name)
    assert definitions == [], f"define ROOT only in tests/helpers.py (import it from there): {definitions}"
