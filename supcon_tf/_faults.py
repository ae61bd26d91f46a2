"""The library's one test hook: named points where a test may interrupt a run; a no-op unless a hook is installed.

The library calls `reached(point, **context)` at these points:

    "write"  `checkpointing.atomic_path`, after a temporary output is
             complete and before it is renamed onto its destination;
             context: `path` (the destination, absolute) and `temporary`
             (the complete temporary output). Every atomic write
             of a run folder passes here: backups, checkpoints, model.keras,
             saved_model, metrics.json, the FINISHED marker, ...
    "fit"    `runner`, before each `fit` call of a stage; context:
             `callbacks` (the list `fit` gets, which the hook may change,
             e.g. insert a callback that stops at a chosen step, as Keras'
             own `BackupAndRestore` tests do).

A test installs a hook with `installed(hook)`: `hook(point, **context)` may
raise, kill the process, or change what the context offers for changing.
The tests' fault injector (tests/fault_injection.py) is the hook that kills,
or fails a write as on a full disk, at a named write of a run folder; run as
a script, it installs itself and runs a binary, for the tests that kill a
real process. No library function takes a test-only argument.
"""

from __future__ import annotations

import contextlib

POINTS = ("write", "fit")

_hook = None


def reached(point, **context):
    """Called by the library at `point` (one of `POINTS`); calls the installed hook, if any."""
    if point not in POINTS:
        raise ValueError(f"`point` must be one of {POINTS}, received: point={point!r}")
    if _hook is not None:
        _hook(point, **context)


@contextlib.contextmanager
def installed(hook):
    """Context manager: `hook(point, **context)` is called at every point reached while it is active.

    Hooks do not nest: installing one while another is active is a ValueError.
    """
    global _hook
    if not callable(hook):
        raise ValueError(f"`hook` must be callable, received: hook={hook!r}")
    if _hook is not None:
        raise ValueError(f"a fault hook is installed already ({_hook!r}); hooks do not nest")
    _hook = hook
    try:
        yield hook
    finally:
        _hook = None
