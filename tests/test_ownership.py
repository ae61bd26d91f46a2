"""Never harm what the user owns: only folders supcon_tf created are written, replaced or cleaned; one writer each.

The unit tests drive `supcon_tf.ownership` and `RunFolder` directly; the
binary tests run `python -m experiments.pretrain` as a user would, on the
bundled digits with a tiny encoder, and check what is left on disk byte by
byte: in a process of its own where a kill or a second process is the point,
otherwise through the binary's entry in this process.
"""

import glob
import json
import os
import signal
import sys
import time

import pytest
from helpers import ROOT, run_binary_in_process, run_command, start_command, start_python

from supcon_tf import ownership
from supcon_tf.run_folder import MARKER, RunFolder

TINY = [
    "--preset=digits_supcon",
    "--epochs=2",
    "--steps_per_epoch=3",
    "--batch_size=32",
    "--encoder_width=0.25",
    "--backup_every_steps=2",
    "--export=false",
    "--verbose=0",
]


def _command(model_dir, *flags):
    return [sys.executable, "-m", "experiments.pretrain", f"--model_dir={model_dir}", *TINY, *flags]


def _run(model_dir, *flags, fault=None, cwd=ROOT):
    return run_command(_command(model_dir, *flags), fault=fault, cwd=cwd)


def _run_in_process(model_dir, *flags):
    """`_run` through the binary's entry in this process: a refusal, a finished run's rerun, or a run that only
    resumes needs no process of its own (a kill does)."""
    return run_binary_in_process("pretrain", f"--model_dir={model_dir}", *TINY, *flags)


def _snapshot(root):
    """{relative path: bytes (files) or None (folders)} of everything under `root`, hidden names included."""
    files = {}
    for directory, folders, names in os.walk(root):
        for name in folders:
            files[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in names:
            with open(os.path.join(directory, name), "rb") as f:
                files[os.path.relpath(os.path.join(directory, name), root)] = f.read()
    return files


def _user_folder(path):
    """A folder as a user keeps it: a thesis, data, a sub-folder, and names that look like our temporaries."""
    os.makedirs(os.path.join(path, "chapter"))
    for name, text in (("thesis.tex", "\\section{x}"), ("data.csv", "a,b\n1,2\n"), (".tmp-notes", "mine"),
                       ("chapter/.tmp-figure", "fig"), (".old-0123abcd-model.keras", "not ours")):
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return _snapshot(path)


def _last_line(result):
    return result.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------
# Units: claiming, replacing, clean-up, the lock.
# ---------------------------------------------------------------------------


def test_claim_writes_the_marker_and_refuses_other_content(tmp_path):
    record = ownership.claim(tmp_path / "new", kind="run", own_entries={"config.json"})
    assert record["kind"] == "run" and len(record["id"]) == 32 and record["pid"] == os.getpid()
    assert json.load(open(tmp_path / "new" / MARKER)) == record
    assert ownership.claim(tmp_path / "new", kind="run", own_entries=())["id"] == record["id"]  # kept, not rewritten
    with pytest.raises(ValueError, match="is a supcon_tf run folder, not a report folder"):
        ownership.check_claimable(tmp_path / "new", kind="report", own_entries=())
    _user_folder(tmp_path / "user")
    with pytest.raises(ValueError, match=r"not empty and supcon_tf did not create it \(no supcon_run.json; it holds "
                                         r"\.old-0123abcd-model\.keras, \.tmp-notes, chapter, data\.csv, thesis\.tex\)"):
        ownership.claim(tmp_path / "user", kind="run", own_entries={"model.keras"})
    assert not os.path.exists(tmp_path / "user" / MARKER)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        ownership.check_claimable(tmp_path / "file", kind="run", own_entries=())
    os.makedirs(tmp_path / "empty")
    assert ownership.check_claimable(tmp_path / "empty", kind="run", own_entries=()) == "empty"


def test_a_marker_being_written_by_another_process_is_not_foreign_content(tmp_path):
    os.makedirs(tmp_path / "run")
    (tmp_path / "run" / f".tmp-0123abcd-{MARKER}").write_text("{")  # another worker, between write and link
    assert ownership.check_claimable(tmp_path / "run", kind="run", own_entries=()) == "empty"
    (tmp_path / "run" / ".tmp-0123abcd-notes").write_text("mine")
    with pytest.raises(ValueError, match="did not create it"):
        ownership.check_claimable(tmp_path / "run", kind="run", own_entries=())


def test_an_older_versions_run_folder_is_adopted(tmp_path):
    os.makedirs(tmp_path / "old" / "backup")
    (tmp_path / "old" / "config.json").write_text("{}")
    folder = RunFolder(tmp_path / "old")
    assert folder.check_claimable() == "adoptable"
    (tmp_path / "old" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="did not create it"):
        folder.check_claimable()


@pytest.mark.parametrize("where", ["root", "home", "cwd", "parent_of_cwd", "symlink", "foreign_entry"])
def test_overwrite_refuses_what_it_must_never_replace(tmp_path, monkeypatch, where):
    run = tmp_path / "run"
    ownership.claim(run, kind="run", own_entries=())
    (run / "config.json").write_text("{}")
    target = run
    if where == "root":
        target = "/"
    elif where == "home":
        monkeypatch.setenv("HOME", str(run))
    elif where == "cwd":
        monkeypatch.chdir(run)
        target = "."
    elif where == "parent_of_cwd":
        os.makedirs(run / "logs")
        monkeypatch.chdir(run / "logs")
    elif where == "symlink":
        os.symlink(run, tmp_path / "link")
        target = tmp_path / "link"
    else:
        (run / "thesis.tex").write_text("mine")
    before = _snapshot(run)
    message = {"root": "is the root folder", "home": "is your home folder", "cwd": "is the current folder or contains it",
               "parent_of_cwd": "is the current folder or contains it", "symlink": "is a symbolic link",
               "foreign_entry": r"holds files supcon_tf did not write \(thesis.tex\)"}[where]
    with pytest.raises(ValueError, match=message):
        RunFolder(target).check_replaceable()
    assert _snapshot(run) == before


def test_replace_keeps_the_old_run_until_the_new_one_finishes(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.claimed():
        folder.start({"a": 1})
        (tmp_path / "run" / "model.keras").write_text("old model")
        old_id = ownership.marker(folder.root)["id"]
        sibling = folder.replace()
        assert sibling == str(tmp_path / f"run.previous-{old_id[:8]}")
        assert (tmp_path / f"run.previous-{old_id[:8]}" / "model.keras").read_text() == "old model"
        assert set(os.listdir(folder.root)) == {MARKER, "locks"}
        assert ownership.marker(folder.root)["replaces"] == {"path": sibling, "id": old_id}
        folder.start({"a": 2})
        folder.finish()
    assert sorted(os.listdir(tmp_path)) == ["run"]


def test_claimed_gives_back_a_folder_it_created_when_the_checks_fail(tmp_path):
    os.makedirs(tmp_path / "empty")
    for name in ("absent", "empty"):
        with pytest.raises(RuntimeError):
            with RunFolder(tmp_path / name).claimed():
                raise RuntimeError("a check failed")
    assert sorted(os.listdir(tmp_path)) == ["empty"] and os.listdir(tmp_path / "empty") == []


def test_the_lock_admits_one_writer_and_names_the_holder(tmp_path):
    with ownership.FolderLock(tmp_path, "worker_0"):
        with pytest.raises(ValueError, match=rf"is in use by another process \(pid {os.getpid()} on host .+, "
                                             r"started \d{4}-\d\d-\d\dT"):
            ownership.FolderLock(tmp_path, "worker_0").acquire()
        ownership.FolderLock(tmp_path, "worker_1").acquire().release()  # another worker's lock is its own
    ownership.FolderLock(tmp_path, "worker_0").acquire().release()  # released with the block
    with pytest.raises(ValueError, match="`holder` must be a file-name-safe string"):
        ownership.FolderLock(tmp_path, "../x")


def test_a_lock_left_by_a_killed_process_never_blocks(tmp_path):
    holder = start_python(
        "-c", "import sys, time; from supcon_tf import ownership; "
        f"ownership.FolderLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        stderr=None,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=rf"pid {holder.pid} on host"):
            ownership.FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    ownership.FolderLock(tmp_path).acquire().release()


def test_damaged_state_never_reads_as_new(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.claimed():
        folder.start({"batch_size": 128})
    (tmp_path / "run" / "run_state.json").write_text("garbage{")
    assert folder.phase() == "running"
    with pytest.raises(ValueError, match=r"other settings \(batch_size=128 -> 64\)"):
        folder.check_resumable({"batch_size": 64})
    os.remove(tmp_path / "run" / "config.json")
    os.makedirs(tmp_path / "run" / "backup" / "worker_0")
    with open(tmp_path / "run" / "backup" / "worker_0" / "step-0000000004.json", "w") as f:
        json.dump({"epoch": 0, "step": 4, "config": {"batch_size": 128}}, f)
    with pytest.raises(ValueError, match=r"other settings \(batch_size=128 -> 64\)"):
        folder.check_resumable({"batch_size": 64})  # the settings the backup records
    folder.check_resumable({"batch_size": 128})
    with open(tmp_path / "run" / "backup" / "worker_0" / "step-0000000004.json", "w") as f:
        json.dump({"epoch": 0, "step": 4}, f)  # an older backup without the config
    with pytest.raises(ValueError, match="put the run's config.json back, or pass --overwrite") as error:
        folder.check_resumable({"batch_size": 128})
    assert "run the same command" not in str(error.value)


def test_a_long_config_difference_is_one_short_line(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with folder.claimed():
        folder.start({f"field_{i}": i for i in range(40)})
    with pytest.raises(ValueError) as error:
        folder.check_resumable({f"field_{i}": -i - 1 for i in range(40)})
    assert "and 36 more (see" in str(error.value) and len(str(error.value)) < 300 + 2 * len(folder.root)


# ---------------------------------------------------------------------------
# Through the binary, as a user meets it.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_users_folder_is_refused_and_left_byte_identical(tmp_path, overwrite):
    before = _user_folder(tmp_path / "thesis")
    result = _run_in_process(tmp_path / "thesis", *(["--overwrite"] if overwrite else []))
    assert result.returncode == 2, result.stderr[-2000:]
    assert "did not create it (no supcon_run.json" in _last_line(result)
    assert _snapshot(tmp_path / "thesis") == before
    assert os.listdir(tmp_path) == ["thesis"]


def test_the_current_folder_is_never_replaced(tmp_path, monkeypatch):
    before = _user_folder(tmp_path / "work")
    monkeypatch.chdir(tmp_path / "work")
    result = _run_in_process(os.path.join(tmp_path, "work"), "--overwrite")
    assert result.returncode == 2
    assert _snapshot(tmp_path / "work") == before


@pytest.mark.slow  # a training process, and a second writer (in this process) while it trains
def test_a_second_writer_is_refused_at_once(tmp_path):
    model_dir = tmp_path / "run"
    first = start_command(_command(model_dir, "--epochs=3"), fault="slow_steps:500")
    try:
        lock = model_dir / "locks" / "worker_0.lock"
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text()) and time.time() < deadline:
            time.sleep(0.2)
        second = _run_in_process(model_dir)  # the lock is the first process's flock: this process is refused too
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"is in use by another process (pid {first.pid} on host" in _last_line(second)
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr[-2000:]
    finally:
        first.kill()
    with open(model_dir / "training_log.csv") as f:
        assert [line.split(",")[0] for line in f.read().splitlines()[1:]] == ["0", "1", "2"]  # each epoch once


@pytest.mark.slow
def test_damaged_state_after_a_kill_is_rebuilt_and_checked(tmp_path):
    model_dir = tmp_path / "run"
    assert _run(model_dir, fault="step:4").returncode == -signal.SIGKILL
    (model_dir / "run_state.json").write_text("garbage{")
    os.remove(model_dir / "config.json")
    changed = _run_in_process(model_dir, "--batch_size=16")
    assert changed.returncode == 2
    assert "other settings (batch_size=32 -> 16" in _last_line(changed)
    resumed = _run_in_process(model_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.load(open(model_dir / "run_state.json"))
    assert state["resumes"][0]["global_step"] > 0 and state["state_rebuilt"] == [0]  # resumed, not restarted


@pytest.mark.slow
def test_a_finished_run_without_its_marker_is_completed_not_retrained(tmp_path):
    model_dir = tmp_path / "run"
    assert _run_in_process(model_dir).returncode == 0
    os.remove(model_dir / "FINISHED")
    before = {name: data for name, data in _snapshot(model_dir).items() if not name.startswith("locks")}
    again = _run_in_process(model_dir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already finished" in again.stdout
    after = _snapshot(model_dir)
    assert os.path.exists(model_dir / "FINISHED")
    assert {name: data for name, data in after.items() if name in before} == before  # nothing retrained


@pytest.mark.slow
def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(tmp_path):
    model_dir = tmp_path / "run"
    assert _run_in_process(model_dir).returncode == 0
    with open(model_dir / "model.keras", "rb") as f:
        old_model = f.read()
    killed = _run(model_dir, "--overwrite", fault="step:4")
    assert killed.returncode == -signal.SIGKILL
    (sibling,) = glob.glob(str(tmp_path / "run.previous-*"))
    with open(os.path.join(sibling, "model.keras"), "rb") as f:
        assert f.read() == old_model
    resumed = _run_in_process(model_dir)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert sorted(os.listdir(tmp_path)) == ["run"]
