"""Folders the project owns: the ownership marker, refusing what it did not create, replacing its own, one writer.

Every folder that supcon_tf writes into on its own account (a stage's run
folder, the demo's, a sweep's or a report's output folder) carries a marker
file, `supcon_run.json`, written when the project creates or first claims the
folder: `{"kind", "id", "created", "host", "pid", "supcon_tf"}`. The rules:

* **Claiming.** A folder may be claimed when it does not exist, is empty, or
  already carries a marker of the same kind. A folder written by an older
  version of the project (no marker, but nothing in it except the names the
  project writes there, `own_entries`, and at least one of its `core`
  entries; `own_entries=None` for a composite folder whose names vary, e.g.
  a report's work folder: the `core` entries alone) is adopted. Anything else (a file, a folder with other content, a
  marker of another kind) is refused with one line, before anything is
  written.
* **Replacing** (`--overwrite`). Only a claimed folder whose every entry is
  one the project writes, and never `/`, the home folder, the current
  folder or one that contains it. The old folder is renamed to a visible
  sibling `<name>.previous-<old id>` (one atomic rename, so a kill leaves
  either the old folder or the sibling, never a mix), a fresh folder is
  claimed, and the sibling is deleted only when the new work has finished
  (`discard_replaced`). A new run that never finishes leaves the old one
  intact beside it.
* **Clean-up** removes only the temporaries that `checkpointing.atomic_path`
  names (`.tmp-<8 hex>-<name>` / `.old-<8 hex>-<name>`) whose `<name>` is one
  the project writes, and only in the folders where it writes them
  (`temporaries`).
* **One writer.** `FolderLock` holds an exclusive `fcntl.flock` on
  `<folder>/locks/<holder>.lock` for as long as the work runs: a second
  process (or a second call in the same process) refuses at once, naming the
  holder's pid, host and start time. A flock dies with its process, so a
  crashed or killed run never blocks the next one. On network file systems
  flock is only as good as the server's lock support: NFSv4 (and NFSv3 with
  its lock manager) honours it across hosts; a mount with `nolock` or
  `local_lock=all` only locks within one host.

Refusals are ValueErrors (exit status 2 from the binaries).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
import uuid

MARKER = "supcon_run.json"
LOCKS = "locks"
# Entries the ownership machinery itself writes in every owned folder.
BOOKKEEPING = frozenset({MARKER, LOCKS})
_TEMPORARY = re.compile(r"^\.(tmp|old)-[0-9a-f]{8}-(.+)$")


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _check_path(path, name):
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"`{name}` must be a non-empty path, received: {name}={path!r}")
    return os.fspath(path)


def marker(path):
    """The marker's record of the folder `path`: a dict, `{}` when the marker is unreadable, None without one."""
    file = os.path.join(os.fspath(path), MARKER)
    if not os.path.isfile(file):
        return None
    try:
        with open(file) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def is_owned(path, kind=None):
    """True when supcon_tf created (or adopted) the folder `path`, of `kind` when given."""
    record = marker(path)
    return record is not None and (kind is None or record.get("kind", kind) == kind)


def _listing(path, limit=5):
    names = sorted(os.listdir(path))
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_claimable(path, *, kind, own_entries, core=(), name="model_dir"):
    """Raises ValueError unless the folder `path` may be claimed for `kind` (module docstring); reads only.

    Returns:
      "absent", "empty", "owned" or "adoptable".
    """
    path = _check_path(path, name)
    if not os.path.lexists(path):
        return "absent"
    if not os.path.isdir(path):
        raise ValueError(f"`{name}` {path} is a file, not a folder: choose a folder path")
    record = marker(path)
    if record is not None:
        found = record.get("kind", kind)
        if found != kind:
            raise ValueError(
                f"`{name}` {path} is a supcon_tf {found} folder, not a {kind} folder: choose another folder"
            )
        return "owned"
    # A marker being written by another process that claims the folder at this moment (multi-worker start-up)
    # is that process's, not foreign content.
    entries = {e for e in os.listdir(path) if not _is_marker_temporary(e)}
    if not entries:
        return "empty"
    if (own_entries is None or entries <= (set(own_entries) | BOOKKEEPING)) and entries & set(core):
        return "adoptable"
    raise ValueError(
        f"`{name}` {path} is not empty and supcon_tf did not create it (no {MARKER}; it holds {_listing(path)}): "
        "choose a new or empty folder; nothing was changed"
    )


def _is_marker_temporary(name):
    match = _TEMPORARY.match(name)
    return match is not None and match.group(2) == MARKER


def _write_marker(path, record):
    """Creates the marker exclusively (a link of a complete temporary file): True if this call created it."""
    temporary = os.path.join(path, f".tmp-{uuid.uuid4().hex[:8]}-{MARKER}")
    with open(temporary, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(temporary, os.path.join(path, MARKER))
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(temporary)


def claim(path, *, kind, own_entries, core=(), name="model_dir", **extra):
    """Claims the folder `path` for `kind` (creating it and its marker as needed); returns the marker's record.

    `extra` goes into a new marker (e.g. `replaces`). Raises ValueError as
    `check_claimable` does.
    """
    check_claimable(path, kind=kind, own_entries=own_entries, core=core, name=name)
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    record = {
        "kind": kind,
        "id": uuid.uuid4().hex,
        "created": _now(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "supcon_tf": _version(),
        **extra,
    }
    if _write_marker(path, record):
        return record
    return marker(path) or {}


def _version():
    from supcon_tf import __version__

    return __version__


def _contains(outer, inner):
    outer, inner = os.path.realpath(outer), os.path.realpath(inner)
    return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def check_replaceable(path, *, kind, own_entries, core=(), name="model_dir", flag="--overwrite"):
    """Raises ValueError unless `path` may be replaced (module docstring); reads only. An absent folder is fine."""
    path = _check_path(path, name)
    if not os.path.lexists(path):
        return
    real = os.path.realpath(path)
    protected = {"/": "the root folder", os.path.realpath(os.path.expanduser("~")): "your home folder"}
    if real in protected:
        raise ValueError(f"`{name}` {path} is {protected[real]}: {flag} never replaces it; choose a run folder")
    if _contains(real, os.getcwd()):
        raise ValueError(
            f"`{name}` {path} is the current folder or contains it: {flag} never replaces it; run from elsewhere "
            "or choose another folder"
        )
    if os.path.islink(path):
        raise ValueError(f"`{name}` {path} is a symbolic link: {flag} replaces only real run folders")
    if check_claimable(path, kind=kind, own_entries=own_entries, core=core, name=name) != "owned":
        return  # empty, or an older version's folder holding only the project's own entries
    if own_entries is None:  # a composite folder (e.g. a report's work folder): everything in it is the project's
        return
    foreign = sorted(set(os.listdir(path)) - set(own_entries) - BOOKKEEPING)
    if foreign:
        raise ValueError(
            f"`{name}` {path} holds files supcon_tf did not write ({', '.join(foreign[:5])}"
            f"{' ...' if len(foreign) > 5 else ''}): {flag} refuses to replace it; move them out first"
        )


def replace(path, *, kind, own_entries, core=(), name="model_dir"):
    """Renames the owned folder `path` to `<path>.previous-<id>` and claims a fresh one; returns the sibling's path.

    Call `check_replaceable` first (and hold the old folder's lock, so no
    other process is writing it). None when there was nothing to replace.
    """
    path = os.path.abspath(_check_path(path, name))
    if not os.path.isdir(path) or not os.listdir(path):
        return None
    if not is_owned(path, kind):
        claim(path, kind=kind, own_entries=own_entries, core=core, name=name)
    old_id = (marker(path) or {}).get("id") or uuid.uuid4().hex
    sibling = f"{path}.previous-{old_id[:8]}"
    while os.path.lexists(sibling):
        sibling = f"{path}.previous-{uuid.uuid4().hex[:8]}"
    os.replace(path, sibling)
    claim(path, kind=kind, own_entries=own_entries, name=name, replaces={"path": sibling, "id": old_id})
    return sibling


def discard_replaced(path, *, kind):
    """Deletes the sibling that the folder `path` replaced (its marker names it), once the new work has finished.

    Only a folder that still carries the replaced folder's own marker is
    deleted. Returns the deleted path, or None.
    """
    import shutil

    replaced = (marker(path) or {}).get("replaces")
    if not isinstance(replaced, dict) or not replaced.get("path"):
        return None
    sibling = replaced["path"]
    record = marker(sibling) if os.path.isdir(sibling) else None
    if record is None or record.get("kind", kind) != kind or (record.get("id") and record.get("id") != replaced.get("id")):
        return None
    shutil.rmtree(sibling)
    return sibling


def temporaries(folder, own_names):
    """The interrupted writes' temporaries directly in `folder` whose target name is in `own_names`."""
    if not os.path.isdir(folder):
        return []
    found = []
    for entry in sorted(os.listdir(folder)):
        match = _TEMPORARY.match(entry)
        if match and (match.group(2) in own_names or any(_fits(match.group(2), pattern) for pattern in own_names)):
            found.append(os.path.join(folder, entry))
    return found


def _fits(name, pattern):
    return isinstance(pattern, re.Pattern) and pattern.fullmatch(name) is not None


def remove_paths(paths):
    """Deletes files and folders (the temporaries `temporaries` found)."""
    import shutil

    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)
    return list(paths)


class FolderLock:
    """An exclusive flock on `<folder>/locks/<holder>.lock`, with the holder's pid, host and start time in the file.

    Use as a context manager or call `acquire` / `release`. `acquire` raises
    ValueError (naming the holder) when another open lock holds it.
    """

    def __init__(self, folder, holder="worker_0", name="model_dir"):
        self.folder = _check_path(folder, name)
        if not isinstance(holder, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", holder):
            raise ValueError(f"`holder` must be a file-name-safe string, received: holder={holder!r}")
        self.name = name
        self.path = os.path.join(self.folder, LOCKS, f"{holder}.lock")
        self._fd = None

    def acquire(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_holder(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise ValueError(
                f"`{self.name}` {self.folder} is in use by another process ({holder}): one run folder takes one "
                "writer; wait for it to end or stop it, or choose another folder"
            ) from None
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": _now()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self):
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    @property
    def held(self):
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_holder(fd):
    try:
        record = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {record['pid']} on host {record['host']}, started {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"
