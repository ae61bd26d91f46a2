"""Chief-only, atomic writing of checkpoints and exports; per-worker backup folders."""

import json
import os

import keras
import numpy as np
import pytest

from supcon_tf import checkpointing
from supcon_tf.encoders import build_encoder


def _cluster(monkeypatch, task_type, index, chief=False):
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    if chief:
        cluster["chief"] = ["127.0.0.1:3"]
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))


def test_chief_is_worker_zero_or_the_chief_task(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert checkpointing.is_chief()
    _cluster(monkeypatch, "worker", 0)
    assert checkpointing.is_chief()
    _cluster(monkeypatch, "worker", 1)
    assert not checkpointing.is_chief()
    _cluster(monkeypatch, "worker", 0, chief=True)
    assert not checkpointing.is_chief()
    _cluster(monkeypatch, "chief", 0, chief=True)
    assert checkpointing.is_chief()
    monkeypatch.setenv("TF_CONFIG", "{oops")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        checkpointing.is_chief()


def test_worker_backup_dirs_differ_per_worker(monkeypatch, tmp_path):
    _cluster(monkeypatch, "worker", 1)
    assert checkpointing.worker_backup_dir(tmp_path) == os.path.join(str(tmp_path), "worker_1")
    _cluster(monkeypatch, "worker", 0)
    assert checkpointing.worker_backup_dir(tmp_path) == os.path.join(str(tmp_path), "worker_0")
    with pytest.raises(ValueError, match="base_dir"):
        checkpointing.worker_backup_dir("")


def test_atomic_path_replaces_on_success_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "out" / "model.keras"
    with checkpointing.atomic_path(target) as temporary:
        assert temporary.endswith(".keras") and os.path.dirname(temporary) == str(target.parent)
        with open(temporary, "w") as f:
            f.write("v1")
    assert target.read_text() == "v1"
    with pytest.raises(RuntimeError):
        with checkpointing.atomic_path(target) as temporary:
            with open(temporary, "w") as f:
                f.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "v1"
    assert sorted(os.listdir(target.parent)) == ["model.keras"]


def test_write_json_atomically_writes_whole_files_or_leaves_the_old_one(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    checkpointing.write_json_atomically(path, {"b": 1, "a": [1.5]}, indent=2, sort_keys=True)
    assert path.read_text() == json.dumps({"a": [1.5], "b": 1}, indent=2, sort_keys=True)
    with pytest.raises(TypeError):  # not JSON-serialisable: nothing replaces the old file, no temporary is left
        checkpointing.write_json_atomically(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [1.5], "b": 1}
    assert sorted(os.listdir(path.parent)) == ["metrics.json"]
    with pytest.raises(ValueError, match="`path` must be a non-empty path, received: path=''"):
        checkpointing.write_json_atomically("", {})


def test_atomic_path_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "export"
    for version in ("1", "2"):
        with checkpointing.atomic_path(target) as temporary:
            os.makedirs(temporary)
            (open(os.path.join(temporary, "v"), "w")).write(version)
    assert (target / "v").read_text() == "2"
    assert os.listdir(tmp_path) == ["export"]
    with pytest.raises(FileNotFoundError):
        with checkpointing.atomic_path(tmp_path / "never"):
            pass
    with pytest.raises(ValueError, match="path"):
        with checkpointing.atomic_path(""):
            pass


def test_only_the_chief_saves(monkeypatch, tmp_path):
    model = build_encoder("small_cnn", (8, 8, 1), width=0.25)
    _cluster(monkeypatch, "worker", 1)
    assert not checkpointing.save_model_atomically(model, tmp_path / "a.keras")
    assert not os.path.exists(tmp_path / "a.keras")
    _cluster(monkeypatch, "worker", 0)
    assert checkpointing.save_model_atomically(model, tmp_path / "a.keras")
    images = np.random.rand(2, 8, 8, 1).astype(np.float32)
    np.testing.assert_allclose(keras.saving.load_model(tmp_path / "a.keras")(images), model(images), atol=1e-6)
    with pytest.raises(ValueError, match="path"):
        checkpointing.save_model_atomically(model, tmp_path / "a.h5")
    with pytest.raises(ValueError, match="model"):
        checkpointing.save_model_atomically("model", tmp_path / "a.keras")


def test_chief_model_checkpoint_callback(monkeypatch, tmp_path):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.random.rand(8, 3), np.random.rand(8, 1)
    callback = checkpointing.ChiefModelCheckpoint(str(tmp_path / "epoch{epoch}.weights.h5"), period=2)
    model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    assert sorted(os.listdir(tmp_path)) == ["epoch2.weights.h5", "epoch3.weights.h5"]
    with pytest.raises(ValueError, match="period"):
        checkpointing.ChiefModelCheckpoint(str(tmp_path / "x.keras"), period=0)
    with pytest.raises(ValueError, match="filepath"):
        checkpointing.ChiefModelCheckpoint(str(tmp_path / "x.ckpt"))
