"""The errors the library raises for the binaries' top level, and the one table of exit statuses.

Every error that reaches a binary's top level (`experiments/flagging.py`,
`absl_main`) is one line on stderr, `<program>: error: <message>`, naming the
path and the cause, and ends the program with the status of its kind:

    status  kind          what happened
    0       ok            finished (or already finished: nothing to do)
    1       internal      an unexpected error: a bug. The line names the exception and where its traceback is.
    2       bad input     a bad flag or value, a missing or existing path, a folder refused, a run folder locked by
                          another process, a config that cannot resume the run; nothing was written
    3       diverged      the loss became non-finite or exploded; the last good backup is kept (resumable)
    4       storage / OS  reading or writing failed: disk full (ENOSPC), permission denied (EACCES), read-only file
                          system (EROFS), I/O error (EIO), ... (the line names the path and the errno), or the
                          machine ran out of a resource (memory); fix that and run the same command to resume
    5       bad file      an input file is corrupt, truncated, of the wrong kind, a folder where a file is expected,
                          or a model with non-finite weights (`BadInputFile`)
    6       collapsed     --stop_on_collapse: the embeddings collapsed (their mean cosine stayed at or above
                          --collapse_cosine for --collapse_epochs epochs); the backups from before the collapse
                          are kept
    130     SIGINT        Ctrl-C during training: a backup at the step was written; the same command resumes
    143     SIGTERM       preemption during training: as SIGINT

The full traceback is kept: appended to `<model_dir>/error.log` when the
binary has a run folder (one the project created), otherwise, for statuses 1
and 4, printed to stderr after the line; absl's `-v 1` (`--verbosity=1`)
prints it to stderr in any case.

`EXIT_STATUSES` is that table; `classify(error)` gives an exception's status
and line. This module imports no TensorFlow (a binary imports it before
TensorFlow loads): TensorFlow's errors are recognised by their class's module
and name.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3
EXIT_STORAGE = 4
EXIT_BAD_FILE = 5
EXIT_COLLAPSED = 6
EXIT_SIGINT = 130  # 128 + SIGINT, what shells report for Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM

# {status: (kind, meaning)}: the table of the module docstring (README "Exit statuses").
EXIT_STATUSES = {
    EXIT_OK: ("ok", "finished, or already finished"),
    EXIT_INTERNAL: ("internal", "an unexpected error (a bug); the traceback is in error.log or on stderr"),
    EXIT_BAD_INPUT: ("bad input", "a bad flag, value or path, a folder refused or locked; nothing written"),
    EXIT_DIVERGED: ("diverged", "the loss diverged; the last good backup is kept"),
    EXIT_STORAGE: ("storage / OS", "reading or writing failed (ENOSPC, EACCES, EROFS, EIO, ...) or out of memory"),
    EXIT_BAD_FILE: ("bad file", "an input file is corrupt, truncated, of the wrong kind, a folder, or non-finite"),
    EXIT_COLLAPSED: ("collapsed", "the embeddings collapsed (--stop_on_collapse); the backups before it are kept"),
    EXIT_SIGINT: ("SIGINT", "interrupted by Ctrl-C; a backup was written, the same command resumes"),
    EXIT_SIGTERM: ("SIGTERM", "preempted; a backup was written, the same command resumes"),
}

# The file of a run folder that holds the tracebacks of the errors that ended its runs (appended).
ERROR_LOG = "error.log"


class BadInputFile(ValueError):
    """An input file the program cannot use: corrupt, truncated, of the wrong kind, a folder, non-finite weights.

    Attributes:
      path: the file (or folder) given.
    """

    def __init__(self, message, *, path):
        super().__init__(message)
        self.path = os.fspath(path)


class RunFolderLocked(ValueError):
    """The run folder is in use by another process (exit status 2). Attributes: path."""

    def __init__(self, message, *, path):
        super().__init__(message)
        self.path = os.fspath(path)


# errno values that only a write reports.
_WRITE_ERRNOS = {
    errno.ENOSPC, errno.EROFS, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC),
}


def errno_name(number):
    """`"ENOSPC"` for errno.ENOSPC; `"errno <n>"` for a number without a name."""
    return errno.errorcode.get(number, f"errno {number}")


def describe_os_error(error):
    """One line for an OSError: what could not be done, to which path, and why, with the errno's name.

    >>> describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/x/model.keras"))
    'cannot write /x/model.keras: No space left on device [ENOSPC]'
    """
    number = getattr(error, "errno", None)
    if number is None:  # raised with a message only
        return " ".join(str(error).split()) or type(error).__name__
    reason = f"{error.strerror or os.strerror(number)} [{errno_name(number)}]"
    path, other = getattr(error, "filename", None), getattr(error, "filename2", None)
    if path is None:
        return reason
    path = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else str(path)
    if other is not None:
        return f"cannot move {path} to {os.fsdecode(other)}: {reason}"
    verb = {
        errno.ENOENT: "find", errno.EISDIR: "use the folder", errno.ENOTDIR: "use",
    }.get(number, "write" if number in _WRITE_ERRNOS else "access")
    return f"cannot {verb} {path}: {reason}"


# ---------------------------------------------------------------------------
# Classifying an exception for the top level.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What the top level does with an exception.

    Attributes:
      status: the exit status (`EXIT_STATUSES`).
      line: the message of the one line (without the program's name).
      internal: an unexpected error (status 1): the line is `internal error: <Type>: <message>`.
      keep_traceback: the traceback must reach the user (error.log, else stderr), not only with -v.
      plain: the line is printed as is, without `<program>: error: ` (the signal's resume hint).
    """

    status: int
    line: str
    internal: bool = False
    keep_traceback: bool = False
    plain: bool = False


def _classes(error):
    """`{(module, name)}` of the classes of `error`, its bases included."""
    return {(cls.__module__, cls.__name__) for cls in type(error).__mro__}


def _is(error, module, name):
    return (module, name) in _classes(error)


def _one_line(text):
    return " ".join(str(text).split())


# The sentences of OS errors as TensorFlow's C++ file system reports them, with their errno.
_TF_STORAGE_PHRASES = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": getattr(errno, "EDQUOT", errno.ENOSPC),
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "Input/output error": errno.EIO,
}


def op_error_sentence(message):
    """The useful sentence of a TensorFlow OpError message, without "Graph execution error:" and the op stack.

    A graph execution error reads "Graph execution error:", then "Detected at
    node ... defined at (most recent call last):" and the Python frames that
    built the op, then the cause, then "[[{{node ...}}]]" and "[Op:...]"; the
    cause is what the line shows.
    """
    text = str(message)
    lines = []
    skipping_frames = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("Graph execution error"):
            continue
        if line.startswith("Detected at node") or line.startswith("Detected unsupported operations"):
            skipping_frames = True
            continue
        if skipping_frames and (raw[:1].isspace() or line.startswith("File ") or line.startswith("<")):
            continue
        skipping_frames = False
        if line.startswith("[[") or line.startswith("Stack trace") or re.fullmatch(r"\[Op:[^\]]*\]", line):
            continue
        lines.append(line)
    sentence = " ".join(lines) if lines else _one_line(text)
    sentence = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", sentence)
    sentence = re.sub(r"\s*\[Op:[^\]]*\]", "", sentence)
    return _one_line(sentence) or "an operation failed"


def _tensorflow_outcome(error):
    message = getattr(error, "message", None) or str(error)
    sentence = op_error_sentence(message)
    name = type(error).__name__
    for phrase, number in _TF_STORAGE_PHRASES.items():
        if phrase.lower() in str(message).lower():
            tag = f"[{errno_name(number)}]"
            return Outcome(EXIT_STORAGE, sentence if tag in sentence else f"{sentence} {tag}", keep_traceback=True)
    if name == "NotFoundError" and "no such file or directory" in str(message).lower():
        return Outcome(EXIT_BAD_INPUT, sentence)
    if name == "ResourceExhaustedError":  # out of memory, most often
        return Outcome(EXIT_STORAGE, f"out of resources: {sentence}", keep_traceback=True)
    if name == "PermissionDeniedError":
        return Outcome(EXIT_STORAGE, sentence, keep_traceback=True)
    return Outcome(EXIT_INTERNAL, f"{name}: {sentence}", internal=True, keep_traceback=True)


def classify(error):
    """The `Outcome` of an exception that reached a binary's top level (statuses: the module docstring)."""
    if _is(error, "supcon_tf.resilience", "Interrupted"):
        return Outcome(getattr(error, "exit_status", EXIT_SIGINT), _one_line(error), plain=True)
    if isinstance(error, KeyboardInterrupt):
        return Outcome(EXIT_SIGINT, "interrupted outside a training step; nothing new to resume from", plain=True)
    if _is(error, "supcon_tf.resilience", "Diverged"):
        return Outcome(getattr(error, "exit_status", EXIT_DIVERGED), _one_line(error))
    if _is(error, "supcon_tf.resilience", "Collapsed"):
        return Outcome(getattr(error, "exit_status", EXIT_COLLAPSED), _one_line(error))
    if isinstance(error, BadInputFile):
        return Outcome(EXIT_BAD_FILE, _one_line(error))
    if isinstance(error, (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)):
        return Outcome(EXIT_BAD_INPUT, describe_os_error(error))
    if isinstance(error, OSError):
        return Outcome(EXIT_STORAGE, describe_os_error(error), keep_traceback=True)
    if any(module.split(".")[0] == "tensorflow" for module, _ in _classes(error)) and hasattr(error, "message"):
        return _tensorflow_outcome(error)
    if isinstance(error, ValueError):  # the library's bad values, RunFolderLocked included
        return Outcome(EXIT_BAD_INPUT, _one_line(error) or type(error).__name__)
    message = _one_line(error)
    return Outcome(
        EXIT_INTERNAL, f"{type(error).__name__}: {message}" if message else type(error).__name__,
        internal=True, keep_traceback=True,
    )
