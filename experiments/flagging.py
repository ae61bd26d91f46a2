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
value is one line on stderr and exit status 2, before anything is written.

This module defines no flag by itself and imports no TensorFlow, so that a
binary checks its flags before TensorFlow loads.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing

from absl import app, flags

# The flags `define` defines belong to the module that calls it (absl's key flags: `--helpshort` of that binary).
flags.disclaim_key_flags()

FLAGS = flags.FLAGS
EXIT_BAD_INPUT = 2
_EXIT_SIGINT = 130  # = supcon_tf.resilience.EXIT_SIGINT, without importing TensorFlow
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
    fields = {field.name: field for field in dataclasses.fields(cls) if "help" in field.metadata}
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
    hints = typing.get_type_hints(cls)
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
    return cls(**values(cls), **fixed)


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


def absl_main(main_fn):
    """The `main(argv)` for `absl.app.run`: runs `main_fn()` and turns its errors into exit statuses.

    2: bad input (a positional argument, a bad value, a missing or existing
    file; nothing written). 130 / 143: SIGINT / SIGTERM during training (a
    backup at the step is written; run the same command to resume). 3: the
    loss diverged (the last good backup is kept).
    """

    def main(argv):
        if len(argv) > 1:
            return fail(ValueError(f"unexpected positional arguments: {argv[1:]}"))
        try:
            return main_fn()
        except (ValueError, FileNotFoundError, FileExistsError) as error:
            return fail(error)
        except KeyboardInterrupt:
            print("interrupted outside a training step; nothing new to resume from", file=sys.stderr)
            return _EXIT_SIGINT
        except Exception as error:
            resilience = sys.modules.get("supcon_tf.resilience")  # loaded by whatever trained, and raised its errors
            if resilience is not None and isinstance(error, resilience.Interrupted):
                print(error, file=sys.stderr)
                return error.exit_status
            if resilience is not None and isinstance(error, resilience.Diverged):
                print(f"{program_name()}: {error}", file=sys.stderr)
                return error.exit_status
            raise

    return main


def run_binary(main_fn):
    """`absl.app.run` of `main_fn()` (no arguments; flags already defined) with `absl_main`'s exit statuses."""
    app.run(absl_main(main_fn), flags_parser=parse_flags)
