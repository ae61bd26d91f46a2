"""Unit tests of the fault-tolerance pieces: run folder, backup store, resumable streams, guards, the fault hook."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import _faults, augment, checkpointing, data, resilience, runner
from supcon_tf.config import RunConfig
from supcon_tf.run_folder import RunFolder

# ---------------------------------------------------------------------------
# Resumable streams: batch k of a stream is the same whether it starts at 0 or at k.
# ---------------------------------------------------------------------------


def _digits_source():
    images, labels = data.load_digits("train")
    return data.from_arrays(images[:200], labels[:200])


def _assert_streams_equal(full, resumed):
    for (views_a, labels_a), (views_b, labels_b) in zip(full, resumed):
        np.testing.assert_array_equal(views_a.numpy(), views_b.numpy())
        np.testing.assert_array_equal(labels_a.numpy(), labels_b.numpy())


@pytest.mark.parametrize("start", [1, 3, 7, 12])
def test_multiview_stream_resumes_at_any_batch(start):
    aug = augment.SimCLRAugment(8, crop_scale=(0.5, 1.0), flip=False)
    options = dict(batch_size=32, num_views=2, augment=aug, seed=5, repeat=True, shuffle_buffer=64)
    full = list(data.make_multiview_dataset(_digits_source(), **options).take(start + 4))
    resumed = list(data.make_multiview_dataset(_digits_source(), start_batch=start, **options).take(4))
    _assert_streams_equal(full[start:], resumed)  # 6 batches per pass: crosses pass boundaries


def test_passes_differ_and_cover_the_data():
    options = dict(batch_size=50, num_views=1, augment=augment.NoAugment(8), seed=1, repeat=True)
    labels = [b[1].numpy() for b in data.make_multiview_dataset(_digits_source(), **options).take(8)]
    first, second = np.concatenate(labels[:4]), np.concatenate(labels[4:])
    assert not np.array_equal(first, second)  # each pass is reshuffled
    np.testing.assert_array_equal(np.sort(first), np.sort(second))  # and holds the same samples


def test_class_balanced_stream_resumes_at_any_batch():
    options = dict(classes_per_batch=4, samples_per_class=2, num_views=2, augment=augment.NoAugment(8), seed=3,
                   repeat=True)
    full = list(data.make_class_balanced_dataset(_digits_source(), **options).take(30))
    resumed = list(data.make_class_balanced_dataset(_digits_source(), start_batch=27, **options).take(3))
    _assert_streams_equal(full[27:], resumed)


def test_feature_batches_resume_and_keep_the_last_small_batch():
    features = np.arange(20, dtype=np.float32).reshape(10, 2)
    labels = np.arange(10)
    full = list(data.make_feature_batches(features, labels, batch_size=4, seed=2).take(9))
    assert [len(b[1]) for b in full[:3]] == [4, 4, 2]  # ceil(10 / 4) batches per pass
    np.testing.assert_array_equal(np.sort(np.concatenate([b[1] for b in full[:3]])), labels)
    resumed = list(data.make_feature_batches(features, labels, batch_size=4, seed=2, start_batch=5).take(4))
    for a, b in zip(full[5:], resumed):
        np.testing.assert_array_equal(a[0].numpy(), b[0].numpy())
    with pytest.raises(ValueError, match="start_batch"):
        data.make_feature_batches(features, labels, batch_size=4, start_batch=-1)


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    for name in ("a", "b"):
        os.makedirs(tmp_path / name)
    keras.utils.save_img(str(tmp_path / "a" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match=r"class folder '.*b' has no image files"):
        data.load_image_folder(str(tmp_path))


# ---------------------------------------------------------------------------
# The run folder.
# ---------------------------------------------------------------------------


def test_lifecycle_phases_and_restarts(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.phase() == "new"
    assert folder.start({"a": 1}) == 0
    assert folder.phase() == "running"
    assert folder.start({"a": 1}) == 1  # a restart of an unfinished run
    folder.enter_finishing(train_seconds=3.0)
    assert folder.phase() == "finishing"
    assert folder.start({"a": 1}) == 2
    assert folder.phase() == "finishing"  # starting again does not go back to running
    os.makedirs(folder.backup_dir)
    folder.finish()
    assert folder.phase() == "finished" and not os.path.exists(folder.backup_dir)


def test_start_removes_only_our_own_temporaries(tmp_path):
    folder = RunFolder(tmp_path / "run")
    ours = [".tmp-0123abcd-model.keras", ".old-89abcdef-saved_model", ".tmp-00ff00ff-metrics.json",
            "checkpoints/.tmp-1234abcd-latest.keras", "backup/worker_0/.tmp-cd12cd12-step-0000000004.json",
            "backup/worker_0/.tmp-cd12cd12-step-0000000004.weights.h5"]
    # A user's files that look like temporaries, or sit where the project writes none: never touched.
    theirs = ["keep.txt", ".tmp-notes", ".tmp-0123abcd-thesis.tex", "chapter/.tmp-figure",
              "checkpoints/.tmp-1234abcd-other.keras", "logs/.old-0000aaaa-model.keras"]
    for name in ours + theirs:
        os.makedirs(os.path.dirname(folder.path(name)), exist_ok=True)
        (os.makedirs if name.endswith("saved_model") else lambda p: open(p, "w").close())(folder.path(name))
    folder.start({})
    left = {os.path.relpath(os.path.join(d, n), folder.root) for d, ds, fs in os.walk(folder.root) for n in ds + fs}
    assert not left & set(ours), sorted(left & set(ours))
    assert set(theirs) <= left


def test_truncate_log_drops_resumed_epochs_and_torn_rows(tmp_path):
    folder = RunFolder(tmp_path)
    with open(folder.csv_path, "w") as f:
        f.write("epoch,loss,val_loss\n0,1.5,NA\n1,1.2,NA\n2,1.1,NA\n3,0.9")  # the last row torn by a kill
    assert folder.truncate_log(2) == 2
    assert open(folder.csv_path).read() == "epoch,loss,val_loss\n0,1.5,NA\n1,1.2,NA\n"
    assert folder.truncate_log(2) == 0  # nothing more to drop
    with open(folder.csv_path, "w") as f:
        f.write("epoch,lo")  # torn header
    folder.truncate_log(0)
    assert not os.path.exists(folder.csv_path)


def test_structural_change_of_an_unfinished_run_is_refused(tmp_path):
    folder = RunFolder(tmp_path / "run")
    config = RunConfig.from_flat(model_dir=str(tmp_path / "run"))
    folder.start(config.to_dict())
    folder.check_resumable(config.replace(learning_rate=0.01).to_dict())  # resumable: allowed
    with pytest.raises(ValueError, match=r"other settings \(batch_size=128 -> 64\); resume it with its own settings"):
        folder.check_resumable(config.replace(batch_size=64).to_dict())
    folder.start(config.replace(learning_rate=0.01).to_dict())
    assert folder.state()["config_changes"] == [
        {"restart": 1, "changed": {"learning_rate": [0.05, 0.01], "resolved_learning_rate": [0.05, 0.01]}}
    ]


# ---------------------------------------------------------------------------
# Backups.
# ---------------------------------------------------------------------------


def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_backup_store_keeps_the_newest_two_and_restores_the_newest(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    store = checkpointing.BackupStore(tmp_path / "backup")
    model = _tiny_model()
    for step in (2, 4, 6):
        model.layers[0].kernel.assign(np.full((3, 2), step, np.float32))
        store.save(model, epoch=step // 4, step=step % 4, global_step=step, meta={"x": step})
    assert sorted(os.listdir(store.folder)) == [
        "step-0000000004.json", "step-0000000004.weights.h5", "step-0000000006.json", "step-0000000006.weights.h5"
    ]
    fresh = _tiny_model()
    state = store.restore(fresh)
    assert (state.global_step, state.epoch, state.step, state.meta["x"]) == (6, 1, 2, 6)
    np.testing.assert_array_equal(fresh.layers[0].kernel.numpy(), 6)
    # An unreadable newest state falls back to the one before.
    with open(store._paths(6)[0], "wb") as f:
        f.write(b"not hdf5")
    assert store.restore(_tiny_model()).global_step == 4
    # Weights without their JSON (a kill between the two writes) are not a state.
    os.remove(store._paths(6)[1])
    assert store.candidates() == [4]


def test_discard_from_drops_the_condemned_states(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    store = checkpointing.BackupStore(tmp_path / "backup", keep=3)
    model = _tiny_model()
    for step in (2, 4, 6):
        store.save(model, epoch=0, step=step, global_step=step, meta={})
    store.discard_from(4)
    assert store.candidates() == [2]
    assert sorted(os.listdir(store.folder)) == ["step-0000000002.json", "step-0000000002.weights.h5"]


def test_workers_resume_from_the_newest_step_they_all_hold(tmp_path, monkeypatch):
    def as_worker(index):
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1", "b:2"]},
                                                    "task": {"type": "worker", "index": index}}))
        return checkpointing.BackupStore(tmp_path / "backup")

    model = _tiny_model()
    for step in (2, 4):
        as_worker(0).save(model, epoch=0, step=step, global_step=step, meta={})
    for step in (2, 4, 6):  # worker 1 also saved at a signal step that worker 0 never reached
        as_worker(1).save(model, epoch=0, step=step, global_step=step, meta={})
    assert as_worker(1).candidates() == [4]
    assert as_worker(0).candidates() == [4]


def test_step_backup_refuses_non_finite_weights(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    model = _tiny_model()
    backup = checkpointing.StepBackup(checkpointing.BackupStore(tmp_path / "b"), steps_per_epoch=4)
    backup.set_model(model)
    model.layers[0].kernel.assign(np.full((3, 2), np.nan, np.float32))
    with pytest.raises(resilience.Diverged, match="non-finite weights"):
        backup.save(0, 1, 1)
    assert not os.path.exists(tmp_path / "b" / "worker_0")


def test_metric_state_round_trip():
    model = _tiny_model()
    model.fit(np.ones((4, 3)), np.ones((4, 2)), epochs=1, verbose=0)
    saved = checkpointing.metric_state(model)
    model.reset_metrics()
    checkpointing.restore_metric_state(model, saved)
    assert checkpointing.metric_state(model) == saved


# ---------------------------------------------------------------------------
# Guards and the injector.
# ---------------------------------------------------------------------------


def test_check_loss_rules():
    assert resilience.check_loss(float("nan"), 1.0, 10) == "not finite"
    assert resilience.check_loss(float("inf"), None, 0) == "not finite"
    assert resilience.check_loss(11.0, 1.0, 10) == "above 10 x the first logged loss 1"
    assert resilience.check_loss(9.0, 1.0, 10) is None
    assert resilience.check_loss(1e9, 1.0, 0) is None  # bound off


def test_divergence_guard_raises_with_epoch_step_loss_and_learning_rate():
    model = _tiny_model()
    guard = resilience.DivergenceGuard(10.0, position=lambda epoch, batch: (batch + 1, epoch * 4 + batch + 1))
    guard.set_model(model)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(0, {"loss": 2.0})
    assert guard.reference == 2.0
    with pytest.raises(resilience.Diverged) as error:
        guard.on_train_batch_end(1, {"loss": 25.0})
    assert str(error.value).startswith(
        "training diverged at epoch 3 step 2: loss 25 (above 10 x the first logged loss 2), learning rate 0.1;"
    )
    assert error.value.exit_status == 3


def test_the_fault_hook_is_a_no_op_unless_installed_and_is_removed_after():
    seen = []
    _faults.reached("write", path="/r/x.json", temporary="/r/.tmp-x.json")  # no hook: nothing
    with _faults.installed(lambda point, **context: seen.append((point, context))):
        _faults.reached("fit", callbacks=[])
        with pytest.raises(ValueError, match="hooks do not nest"):
            with _faults.installed(print):
                pass
    _faults.reached("fit", callbacks=[])  # removed again
    assert seen == [("fit", {"callbacks": []})]
    with pytest.raises(RuntimeError):
        with _faults.installed(lambda point, **context: None):
            raise RuntimeError("a test failing inside")
    _faults.reached("fit", callbacks=[])  # removed after an exception too
    with pytest.raises(ValueError, match="`point` must be one of"):
        _faults.reached("nowhere")
    with pytest.raises(ValueError, match="`hook` must be callable"):
        with _faults.installed("not callable"):
            pass


def test_every_write_point_of_a_run_reaches_the_hook(tmp_path):
    """A short run through `runner.run` with a recording hook: each named write of a run folder passes the hook's
    "write" point once its temporary is complete, and "fit" offers the callbacks."""
    from fault_injection import write_point

    written, fits = [], []

    def record(point, **context):
        if point == "write":
            assert os.path.exists(context["temporary"])  # complete, not renamed yet
            written.append(write_point(context["path"], context["temporary"]))
        else:
            fits.append([type(c).__name__ for c in context["callbacks"]])

    config = RunConfig.from_flat(
        model_dir=str(tmp_path / "run"), method="supcon", encoder_width=0.25, head_hidden=32, embedding_dim=16,
        batch_size=16, epochs=2, steps_per_epoch=2, backup_every_steps=1, verbose=0,
    )
    with _faults.installed(record):
        runner.run(config)
    assert fits == [["DivergenceGuard", "RunCSVLogger", "TensorBoard", "CollapseMonitor", "ChiefModelCheckpoint",
                     "StepBackup"]]
    named = [w for w in written if w is not None]
    # Per epoch of 2 steps: the mid-epoch backup (step 1), the checkpoint, the end-of-epoch backup.
    epoch = ["backup_write", "checkpoint_write", "backup_write"]
    assert named == epoch * 2 + ["final_model_save", "saved_model_export", "metrics_write", "finished_marker"], named


def test_the_fault_injector_parses_and_rejects_its_specs():
    from fault_injection import FaultInjector, write_point

    assert FaultInjector("csv_append:2").count == 2
    injector = FaultInjector("disk_full:backup_write:3")
    assert (injector.mode, injector.point, injector.count) == ("disk_full", "backup_write", 3)
    for bad in ("nowhere", "", "step:x", "disk_full:nan_loss"):
        with pytest.raises(ValueError, match="a fault spec must be"):
            FaultInjector(bad)
    injector = FaultInjector("internal_error:metrics_write:2")
    injector.reached("csv_append")  # another point: nothing happens
    injector.reached("metrics_write")  # the first: nothing
    with pytest.raises(RuntimeError, match="injected internal error at metrics_write"):
        injector.reached("metrics_write")
    assert write_point("/r/backup/worker_0/step-0000000004.weights.h5", "/r/x") == "backup_write"
    assert write_point("/r/backup/worker_0/step-0000000004.json", "/r/x") is None
    assert write_point("/r/checkpoints/latest.keras", "/r/x") == "checkpoint_write"
    assert write_point("/r/run_state.json", "/r/x") is None


def test_signal_watcher_records_signals_sets_its_event_and_restores_the_handlers():
    import signal

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with resilience.SignalWatcher() as watcher:
        assert watcher.received is None and not watcher.event.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.received == signal.SIGTERM and watcher.event.is_set()
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):  # a second SIGINT: the user insists
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with resilience.SignalWatcher(insist=False) as watcher:  # a server's: every signal is only recorded
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGINT)
        assert watcher.received == signal.SIGINT and watcher.event.is_set()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with pytest.raises(ValueError, match="`insist` must be a bool"):
        resilience.SignalWatcher(insist=1)


def test_interrupted_exit_statuses_and_message():
    import signal

    error = resilience.Interrupted(signal.SIGINT, 3, 17)
    assert str(error) == "interrupted at epoch 4 step 17; run the same command to resume"
    assert error.exit_status == 130
    assert resilience.Interrupted(signal.SIGTERM, 0, 1).exit_status == 143


# ---------------------------------------------------------------------------
# Up-front checks (the binaries' end-to-end versions are in test_run_lifecycle.py).
# ---------------------------------------------------------------------------


def test_batch_larger_than_the_data_is_refused_up_front():
    strategy = tf.distribute.get_strategy()
    config = RunConfig.from_flat(batch_size=2048)
    with pytest.raises(ValueError, match=r"`batch_size` \(2048, global over 1 replica\(s\)\) is larger than the "
                                         r"training split \(1437 examples\).*use --batch_size <= 1437"):
        runner.check_inputs(config, strategy, 1437, 10)
    assert runner.check_inputs(RunConfig.from_flat(batch_size=100), strategy, 1437, 10) == 14
    # The cached linear probe keeps the last, smaller batch.
    linear = RunConfig.from_flat(method="linear", pretrained="x.keras", batch_size=2048)
    assert runner.check_inputs(linear, strategy, 1437, 10) == 1


def test_config_validates_the_new_fields():
    with pytest.raises(ValueError, match="backup_every_steps"):
        RunConfig.from_flat(backup_every_steps=-1)
    with pytest.raises(ValueError, match="divergence_factor"):
        RunConfig.from_flat(divergence_factor=0.5)
    with pytest.raises(ValueError, match="channels"):
        RunConfig.from_flat(channels=2)
