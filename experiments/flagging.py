"""The one flag mechanism of the binaries: absl flags generated from frozen dataclass fields, and read back.

A field is a flag when its metadata holds a help text: `option(default, text)`
here, or `dataclasses.field(default=..., metadata={"help": text})` in the
library (`supcon_tf.config.RunConfig`, which never reads flags). The field's
type gives the kind of flag:

    bool -> DEFINE_bool   int -> DEFINE_integer   float -> DEFINE_float   str -> DEFINE_string
    tuple[X, ...] -> DEFINE_list, whose comma-separated items are parsed as X
    X | None -> the flag of X (unset: None)

The flag has the field's name unless `metadata["flag"]` gives another one
(e.g. the sweep's `temperatures` field is `--temperature_grid`). `define`
defines the flags of a config, `values` reads them back as `{field: value}`,
and the config validates them at construction (a `ValueError` naming the
field and the value). `run_binary` runs a program's main with one error
convention: a malformed or unknown flag, a positional argument or a bad
value is one line on stderr and exit status 2, before anything is written;
any other error that reaches the top level is one line too, with the exit
status of its kind (the table of `supcon_tf/errors.py`), and its traceback is
kept: appended to `<model_dir>/error.log` when the binary registered a run
folder (`set_run_folder`), else printed after the line for unexpected and
storage errors; absl's `-v 1` prints it to stderr in any case.

This module defines no flag by itself and imports no TensorFlow, so that a
binary checks its flags before TensorFlow loads. Importing it sets the
binaries' TensorFlow environment defaults (`BINARY_ENVIRONMENT`: oneDNN
kernels on, TensorFlow's C++ info and warning lines off; BUILD_NOTES.md),
which must be in place before TensorFlow is imported; a value the user set
is kept. Every binary imports this module before anything that imports
TensorFlow. The consoles are quiet by default (`quiet_consoles`): the C++
lines TensorFlow writes while it is imported, before its log level applies
(absl's "All log messages before absl::InitializeLog()" warning, the oneDNN
notice), are held back, and its Python INFO lines are off. absl's `-v 1`
(`--verbosity=1`) on the command line restores all of them (and prints a
top-level error's traceback); a `TF_CPP_MIN_LOG_LEVEL` the user set is kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.abc
import importlib.util
import os
import re
import shlex
import sys
import tempfile
import traceback
import types
import typing

from absl import app, flags

# The binaries' TensorFlow environment defaults, set at import (before TensorFlow loads); a user's value wins.
# TF_CPP_MIN_LOG_LEVEL 3: TensorFlow's C++ info, warning and error lines off (their errors reach the user as
# Python exceptions; level 2 still shows oneDNN's "supports DT_BOOL only on platforms with AVX-512" false alarm).
BINARY_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
# The environment kept with absl's `-v 1`: TensorFlow's own log level.
VERBOSE_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1"}

# The lines TensorFlow's C++ code writes while it is imported, before its log level applies: absl's notice
# that logging is not initialised, and INFO-severity lines (`I0000 00:00:... port.cc:153] oneDNN custom ...`).
_IMPORT_NOTICE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] .*"
)


def requested_verbosity(argv):
    """absl's `-v N` / `-vN` / `-v=N` / `--verbosity N` / `--verbosity=N` in `argv` (the last one), or None.

    Read before the flags are parsed (nothing is changed), because the
    environment of TensorFlow's C++ logging must be set before it is imported;
    absl parses the same flag later. A value that is not an int counts as
    None (absl then reports it).
    """
    found = None
    args = list(argv[1:])
    for index, arg in enumerate(args):
        if arg == "--":
            break
        value = None
        if arg in ("-v", "--verbosity"):
            value = args[index + 1] if index + 1 < len(args) else None
        elif arg.startswith(("--verbosity=", "-v=")):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-v") and arg[2:].lstrip("-").isdigit():
            value = arg[2:]
        if value is not None:
            try:
                found = int(value)
            except ValueError:
                found = None
    return found


def quiet_consoles(argv, environ=None):
    """Sets the binaries' environment defaults and holds back TensorFlow's import notices; True if quiet.

    Quiet unless absl's `-v 1` (or more) is in `argv`: then only
    `VERBOSE_ENVIRONMENT` is defaulted and nothing is held back (a value the
    user set in the environment is kept either way). Quiet: `BINARY_ENVIRONMENT` is defaulted and, if
    TensorFlow is not imported yet, its import runs with file descriptor 2
    redirected to a temporary file; afterwards the lines that are not
    `_IMPORT_NOTICE`s are written back to stderr (every line if the import
    fails).
    """
    environ = os.environ if environ is None else environ
    verbose = (requested_verbosity(argv) or 0) >= 1
    for name, value in (VERBOSE_ENVIRONMENT if verbose else BINARY_ENVIRONMENT).items():
        environ.setdefault(name, value)
    if not verbose and "tensorflow" not in sys.modules and not any(
        isinstance(finder, _QuietImport) for finder in sys.meta_path
    ):
        sys.meta_path.insert(0, _QuietImport())
    return not verbose


class _QuietImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, with a loader that runs its import with fd 2 held (`_held_stderr`)."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; the real finders find the package
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its real loader
        with _held_stderr():
            self.loader.exec_module(module)


@contextlib.contextmanager
def _held_stderr():
    """Runs the block with fd 2 in a temporary file, then writes its lines back but the `_IMPORT_NOTICE`s."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable fd 2: nothing to hold
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = [line for line in lines if failed or not _IMPORT_NOTICE.fullmatch(line.rstrip("\n"))]
            if kept:
                os.write(2, "".join(kept).encode("utf-8", "replace"))


quiet_consoles(sys.argv)

# The flags `define` defines belong to the module that calls it (absl's key flags: `--helpshort` of that binary).
flags.disclaim_key_flags()

FLAGS = flags.FLAGS
_DEFINE = {
    bool: flags.DEFINE_bool,
    int: flags.DEFINE_integer,
    float: flags.DEFINE_float,
    str: flags.DEFINE_string,
    list: flags.DEFINE_list,
}


def option(default, text, *, flag=None):
    """A dataclass field that is a flag: its default, its help text and, if it differs from the field's, its name."""
    metadata = {"help": text} if flag is None else {"help": text, "flag": flag}
    return dataclasses.field(default=default, metadata=metadata)


def flag_fields(cls, names=None):
    """The fields of the dataclass `cls` that are flags (they have a help text), or only `names`, in that order."""
    # A nested config (RunConfig) lists its settings flat; a plain dataclass its fields.
    every = cls.flat_fields() if hasattr(cls, "flat_fields") else dataclasses.fields(cls)
    fields = {field.name: field for field in every if "help" in field.metadata}
    if names is None:
        return list(fields.values())
    missing = [name for name in names if name not in fields]
    if missing:
        raise TypeError(f"{cls.__name__} has no flag field named {', '.join(missing)}")
    return [fields[name] for name in names]


def flag_name(field):
    return field.metadata.get("flag", field.name)


def help_texts(cls):
    """`{field: help text}` of the flag fields of `cls`."""
    return {field.name: field.metadata["help"] for field in flag_fields(cls)}


def _kinds(cls, fields):
    """`{field name: (flag kind, list item type)}`, from the fields' type annotations."""
    hints = cls.flat_type_hints() if hasattr(cls, "flat_type_hints") else typing.get_type_hints(cls)
    return {field.name: _kind(hints[field.name], f"{cls.__name__}.{field.name}") for field in fields}


def _kind(hint, where):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        hint = others[0] if len(others) == 1 else hint
    if hint is tuple or typing.get_origin(hint) is tuple:
        args = typing.get_args(hint)
        return list, args[0] if args else str
    if hint in (bool, int, float, str):
        return hint, None
    raise TypeError(f"{where}: a field of type {hint} cannot be a flag")


def define(cls, *, names=None, defaults=None, unset=False, flag_values=FLAGS):
    """Defines one flag per flag field of `cls` (only `names`, if given), with the field's help text.

    Args:
      cls: a dataclass whose flag fields carry their help text.
      names: only these fields (e.g. the `RunConfig` settings an experiment
        sets on every stage).
      defaults: `{field: value}` replacing the field defaults (an experiment's
        own default for a `RunConfig` setting).
      unset: every flag defaults to None and its help text states the
        default; `values(..., unset=True)` then returns only the flags given
        on the command line (the training binaries: an unset flag does not
        override --preset).
    """
    defaults = defaults or {}
    fields = flag_fields(cls, names)
    kinds = _kinds(cls, fields)
    for field in fields:
        kind, _ = kinds[field.name]
        default = defaults.get(field.name, field.default)
        default = None if default is dataclasses.MISSING else default
        text = field.metadata["help"]
        if unset:
            text, default = f"{text} (default: {default!r})", None
        elif kind is list and default is not None:
            default = [str(item) for item in default]
        _DEFINE[kind](flag_name(field), default, text, flag_values=flag_values)


def values(cls, *, names=None, unset=False, flag_values=FLAGS):
    """`{field: value}` of the parsed flags that `define(cls, names=names)` defined; lists parsed into tuples.

    With `unset`, flags left unset (None) are left out.
    """
    out = {}
    fields = flag_fields(cls, names)
    kinds = _kinds(cls, fields)
    for field in fields:
        kind, item = kinds[field.name]
        value = flag_values[flag_name(field)].value
        if value is None and unset:
            continue
        if kind is list and value is not None:
            value = parse_list(flag_name(field), value, item)
        out[field.name] = value
    return out


def from_flags(cls, **fixed):
    """`cls` built from its parsed flags (and `fixed`, the fields that are not flags); validated by `cls`."""
    build = getattr(cls, "from_flat", cls)  # a nested config is built from its flat settings
    return build(**values(cls), **fixed)


def parse_list(name, items, kind):
    """The items of list flag `--name` as a tuple of `kind`; ValueError naming the flag otherwise."""
    try:
        return tuple(kind(item) for item in items)
    except ValueError:
        raise ValueError(
            f"`--{name}` must be a comma-separated list of {kind.__name__}s, received: {','.join(items)!r}"
        ) from None


# ---------------------------------------------------------------------------
# Running a binary: one error convention.
# ---------------------------------------------------------------------------


def _load_errors():
    """`supcon_tf.errors` (the table of exit statuses), loaded without the package, whose import loads TensorFlow.

    The module is registered under its own name, so the library's later
    `from supcon_tf.errors import ...` gets this same module (and classes).
    """
    name = "supcon_tf.errors"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("supcon_tf")  # finds the package without importing it
    path = os.path.join(package.submodule_search_locations[0], "errors.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


errors = _load_errors()
EXIT_BAD_INPUT = errors.EXIT_BAD_INPUT
# The marker file of a run folder the project created (= supcon_tf.run_folder.MARKER, which imports TensorFlow).
RUN_FOLDER_MARKER = "supcon_run.json"


def program_name():
    """The program as the user typed it: the console script, or the module of `python -m`."""
    path = sys.argv[0] if sys.argv else ""
    name = os.path.basename(path)
    if name == "__main__.py":  # python -m experiments.report
        name = os.path.basename(os.path.dirname(path))
    return name.removesuffix(".py") or "supcon"


def fail(error):
    """Prints `error` as one line on stderr, `<program>: error: <message>`; returns exit status 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{program_name()}: error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def parse_flags(argv):
    """absl's flag parser (`app.run`'s `flags_parser`), with a malformed or unknown flag as one line, exit 2."""
    try:
        return FLAGS(argv)
    except flags.Error as error:
        sys.exit(fail(error))


# The run folder of this process, where a top-level error's traceback is appended (`set_run_folder`).
_run_folder = None


def set_run_folder(path):
    """Tells the top level the binary's run folder (its `model_dir`): a top-level error's traceback goes there.

    It is used only while the folder holds the project's marker file
    (`RUN_FOLDER_MARKER`): the program never writes into a folder it did not
    create. None forgets it.
    """
    global _run_folder
    _run_folder = None if path is None else os.path.abspath(os.fspath(path))


def is_run_folder(path):
    """True when `path` is a run folder the project created (`supcon_tf.run_folder.is_run_folder`, TF-free)."""
    return path is not None and os.path.isfile(os.path.join(os.fspath(path), RUN_FOLDER_MARKER))


def _verbose():
    """absl's `-v` / `--verbosity` >= 1: the traceback of a top-level error goes to stderr too."""
    try:
        return (FLAGS["verbosity"].value or 0) >= 1
    except (KeyError, AttributeError, flags.Error):
        return False


def _append_error_log(folder, status, line, trace):
    """Appends one block (time, argv, status, the line, the traceback) to `<folder>/error.log`; its path or None.

    One `write` on a file opened for appending, so that blocks of concurrent
    processes do not interleave; None when the write fails (e.g. the full
    disk that caused the error): the caller then prints the traceback.
    """
    path = os.path.join(folder, errors.ERROR_LOG)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    block = (
        f"==== {stamp} pid {os.getpid()} exit status {status}\n"
        f"argv: {shlex.join(sys.argv)}\n"
        f"{line}\n{trace}"
        f"{'' if trace.endswith(chr(10)) else chr(10)}\n"
    ).encode("utf-8", "backslashreplace")
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(descriptor, block)
        finally:
            os.close(descriptor)
    except OSError:
        return None
    return path if written == len(block) else None


def report_error(error):
    """Reports an exception that reached the top level; returns its exit status (`supcon_tf.errors`).

    One line on stderr. The traceback is appended to the registered run
    folder's error.log (when the project created that folder), printed to
    stderr with `-v 1`, and otherwise printed after the line when the error
    is unexpected (status 1) or a storage / OS error (4), so it is never lost.
    """
    outcome = errors.classify(error)
    program = program_name()
    trace = "".join(traceback.format_exception(error))
    if outcome.plain:
        line = outcome.line
    elif outcome.internal:
        line = f"{program}: internal error: {outcome.line}"
    else:
        line = f"{program}: error: {outcome.line}"
    signal_stop = outcome.status in (errors.EXIT_SIGINT, errors.EXIT_SIGTERM)
    log = None
    if not signal_stop and is_run_folder(_run_folder):
        log = _append_error_log(_run_folder, outcome.status, line, trace)
    verbose = _verbose()
    if outcome.keep_traceback:
        line += f" (traceback in {log})" if log else " (traceback below)" if not verbose else ""
    print(line, file=sys.stderr, flush=True)
    if verbose or (outcome.keep_traceback and log is None):
        print(trace, end="", file=sys.stderr, flush=True)
    return outcome.status


def absl_main(main_fn, *, positional=None):
    """The `main(argv)` for `absl.app.run`: runs `main_fn()` and turns its errors into exit statuses.

    The statuses are those of `supcon_tf/errors.py`: 2 bad input (a
    positional argument, a bad value, a missing or existing file; nothing
    written), 3 the loss diverged (the last good backup is kept), 4 a storage
    or OS error (disk full, permission, ...), 5 a bad input file, 6 a
    collapsed pre-training with --stop_on_collapse (the backups from before
    the collapse are kept), 1 an unexpected error, 130 / 143 SIGINT / SIGTERM during training (a backup at
    the step is written; run the same command to resume). Each is one line on
    stderr (`report_error`).
    """

    def main(argv):
        set_run_folder(None)
        arguments = argv[1:]
        if positional is None and arguments:
            return fail(ValueError(f"unexpected positional arguments: {arguments}"))
        if positional is not None and len(arguments) != 1:
            return fail(ValueError(f"expected one positional argument {positional}, received: {arguments}"))
        try:
            return main_fn(*arguments)
        except (Exception, KeyboardInterrupt) as error:  # SystemExit passes: an exit status chosen already
            return report_error(error)

    return main


def quiet_python_logs():
    """Without `-v 1` on the command line: TensorFlow's and absl's Python INFO lines off (warnings stay).

    absl's `app.run` logs at INFO by default (`--verbosity 0`), which lets
    TensorFlow's INFO lines through (nine of them for one SavedModel export).
    An explicit `-v` / `--verbosity` is left as the user gave it.
    """
    import logging

    from absl import logging as absl_logging

    if FLAGS["verbosity"].present:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def run_binary(main_fn, *, positional=None):
    """`absl.app.run` of `main_fn()` (flags already defined) with `absl_main`'s exit statuses.

    `main_fn` takes no argument, or, with `positional` (its name for the
    messages, e.g. "RUN"), the one positional argument of the command line.
    The process's logging is set first (`quiet_python_logs`).
    """

    def main(*arguments):
        quiet_python_logs()
        return main_fn(*arguments)

    app.run(absl_main(main, positional=positional), flags_parser=parse_flags)
