"""Collapse caught as it happens: SupConModel's `mean_cosine` / `collapse_share`, `resilience.CollapseMonitor`,
`Collapsed` (exit status 6), and real digits runs that collapse (and the same runs with a remedy that do not).

The reproduction: the report's SupCon settings (digits_supcon preset, 8x8 images, batch 128, SGD momentum 0.9,
lr 0.05, no warm-up, validation_fraction 0.2) at temperature 0.05 and seed 4 collapse within the first epoch; two
epochs are enough for the epoch mean of `mean_cosine` to reach ~0.998 in epoch 1 (0-based).
"""

import csv
import glob
import itertools
import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from helpers import run_binary_in_process, with_loss_config
from loss_reference import reference_loss
from supcon_tf import encoders, errors, layers, losses, resilience, runner, run_folder
from supcon_tf.checkpointing import BackupStore
from supcon_tf.config import RunConfig
from supcon_tf.models.supcon import COLLAPSE_TOLERANCE, SupConModel, collapse_share, mean_cosine


# ---------------------------------------------------------------------------
# Float64 NumPy references, written from the formulas.
# ---------------------------------------------------------------------------


def _mean_cosine_reference(z):
    """Mean of z_i . z_j over the ordered pairs i != j, by a loop over the pairs."""
    flat = np.asarray(z, np.float64).reshape(-1, np.shape(z)[-1])
    n = len(flat)
    total = sum(float(flat[i] @ flat[j]) for i, j in itertools.permutations(range(n), 2))
    return total / (n * (n - 1)) if n > 1 else 0.0


def _supcon_losses_reference(z, labels, temperature):
    """Per-anchor SupCon loss (eq. 2, denominator: every other entry), anchors sample-major over all views
    (`tests/loss_reference.py`)."""
    return reference_loss(z, labels, temperature=temperature)[0].reshape(-1)


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ---------------------------------------------------------------------------
# mean_cosine
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 2, 5), (3, 4, 8), (5, 1, 3)])
def test_mean_cosine_matches_the_pairwise_loop(shape):
    rng = np.random.default_rng(sum(shape))
    z = _unit(rng.normal(size=shape))
    assert float(mean_cosine(z.astype(np.float32))) == pytest.approx(_mean_cosine_reference(z), abs=1e-6)
    # Exact for any vectors (no unit norm needed), in float64 for float64 input.
    raw = rng.normal(size=shape) * 3.0
    value = mean_cosine(raw)
    assert value.dtype == tf.float64
    assert float(value) == pytest.approx(_mean_cosine_reference(raw), abs=1e-12)


def test_mean_cosine_of_collapsed_orthogonal_and_opposite_embeddings():
    u = _unit(np.arange(1.0, 9.0))
    collapsed = np.tile(u, (16, 2, 1)).astype(np.float32)  # every embedding the same unit vector
    assert float(mean_cosine(collapsed)) == pytest.approx(1.0, abs=1e-6)
    orthogonal = np.eye(8, dtype=np.float32).reshape(4, 2, 8)
    assert float(mean_cosine(orthogonal)) == pytest.approx(0.0, abs=1e-7)
    opposite = np.concatenate([np.eye(8), -np.eye(8)]).reshape(8, 2, 8).astype(np.float32)  # they sum to zero
    n = 16
    assert float(mean_cosine(opposite)) == pytest.approx(-1.0 / (n - 1), abs=1e-7)
    assert float(mean_cosine(opposite)) == pytest.approx(_mean_cosine_reference(opposite), abs=1e-7)
    assert float(mean_cosine(np.ones((1, 1, 4), np.float32))) == 0.0  # one embedding: no pair


def test_mean_cosine_validates_its_input():
    with pytest.raises(ValueError, match=r"`embeddings` must be \[batch, views, dim\].*shape \(4,\)"):
        mean_cosine(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="`embeddings` must be a float tensor.*int32"):
        mean_cosine(np.ones((2, 2, 3), np.int32))


# ---------------------------------------------------------------------------
# collapse_share
# ---------------------------------------------------------------------------


def test_collapse_share_counts_anchors_within_the_tolerance_of_log_n_minus_1():
    n_c = 256
    target = math.log(n_c - 1)
    values = np.array([[target, target + 0.009], [target - 0.011, target + 0.5], [target, 1.0]], np.float32)
    has_positive = np.array([[True, True], [True, True], [False, True]])
    per_anchor = losses.PerAnchorLoss(tf.constant(values), tf.constant(has_positive))
    loss64 = values.astype(np.float64)
    expected = np.sum((np.abs(loss64 - target) <= COLLAPSE_TOLERANCE) & has_positive) / has_positive.sum()
    assert expected == pytest.approx(2 / 5)
    assert float(collapse_share(per_anchor, n_c)) == pytest.approx(expected)
    # The loss scale temperature / base_temperature divides out.
    scaled = losses.PerAnchorLoss(tf.constant(values * 0.5), tf.constant(has_positive))
    assert float(collapse_share(scaled, tf.constant(n_c), scale=0.5)) == pytest.approx(expected)
    nobody = losses.PerAnchorLoss(tf.constant(values), tf.zeros_like(has_positive))
    assert float(collapse_share(nobody, n_c)) == 0.0


def test_a_fully_collapsed_batch_is_entirely_at_the_all_equal_value():
    u = _unit(np.arange(1.0, 9.0)).astype(np.float32)
    z = np.tile(u, (8, 2, 1))
    labels = np.arange(8) % 3
    per_anchor = losses.supcon_per_anchor_loss(z, labels, temperature=0.05)
    np.testing.assert_allclose(per_anchor.loss.numpy(), math.log(16 - 1), rtol=1e-6)
    assert float(collapse_share(per_anchor, 16)) == 1.0
    assert float(collapse_share(per_anchor, 64)) == 0.0  # another contrast size, another all-equal value
    # Orthogonal embeddings have all similarities equal too (0): the loss cannot tell the positives either, and
    # sits at the same value; mean_cosine (0, not 1) tells the two apart.
    orthogonal = np.eye(16, dtype=np.float32).reshape(8, 2, 16)
    assert float(collapse_share(losses.supcon_per_anchor_loss(orthogonal, labels, temperature=0.05), 16)) == 1.0
    # Learned: the two views of a sample coincide, samples are orthogonal: no anchor sits there.
    learned = np.repeat(np.eye(8, dtype=np.float32)[:, None, :], 2, axis=1)
    per_anchor = losses.supcon_per_anchor_loss(learned, np.arange(8), temperature=0.05)
    assert float(collapse_share(per_anchor, 16)) == 0.0


def test_collapse_share_validates_its_input():
    per_anchor = losses.PerAnchorLoss(tf.zeros([2, 2]), tf.ones([2, 2], tf.bool))
    with pytest.raises(ValueError, match="`per_anchor` must be a PerAnchorLoss"):
        collapse_share(np.zeros([2, 2]), 4)
    with pytest.raises(ValueError, match="`contrast_size` must be >= 2, received: contrast_size=1"):
        collapse_share(per_anchor, 1)
    with pytest.raises(ValueError, match="`contrast_size` must be an int >= 2, received: contrast_size=4.0"):
        collapse_share(per_anchor, 4.0)
    with pytest.raises(ValueError, match="`scale` must be a positive number, received: scale=0"):
        collapse_share(per_anchor, 4, scale=0)
    with pytest.raises(ValueError, match="`tolerance` must be a positive number, received: tolerance=-1"):
        collapse_share(per_anchor, 4, tolerance=-1)


# ---------------------------------------------------------------------------
# SupConModel logs them.
# ---------------------------------------------------------------------------


def _model(**kwargs):
    keras.utils.set_random_seed(5)
    model = SupConModel(
        encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25), layers.ProjectionHead((16,), 8), **with_loss_config(kwargs)
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def _batch(batch=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((batch, 2, 8, 8, 1)).astype(np.float32), (np.arange(batch) % 3).astype(np.int32)


def test_logged_metrics_match_the_references_on_the_models_own_embeddings():
    views, labels = _batch()
    model = _model(temperature=0.05)
    embeddings = model.embed_views(views, training=False).numpy()
    logs = model.test_on_batch(views, labels, return_dict=True)
    assert logs["mean_cosine"] == pytest.approx(_mean_cosine_reference(embeddings), abs=1e-6)
    per_anchor = _supcon_losses_reference(embeddings, labels, 0.05)
    distance = np.abs(per_anchor - math.log(len(per_anchor) - 1))
    assert np.min(np.abs(distance - COLLAPSE_TOLERANCE)) > 1e-4, "a reference value sits on the tolerance's edge"
    expected = np.mean(distance <= COLLAPSE_TOLERANCE)
    assert 0.0 < expected < 1.0  # a batch where the share is informative (a fresh small_cnn is close to collapse)
    assert logs["collapse_share"] == pytest.approx(expected, abs=1e-6)
    assert logs["loss"] == pytest.approx(float(np.mean(per_anchor)), rel=1e-5)


def test_metric_names_on_by_default_with_validation_and_off_on_request():
    views, labels = _batch()
    data = tf.data.Dataset.from_tensors((views, labels)).repeat()
    history = _model().fit(data, steps_per_epoch=2, epochs=1, verbose=0,
                           validation_data=tf.data.Dataset.from_tensors((views, labels)))
    assert set(history.history) == {"loss", "mean_cosine", "collapse_share", "val_loss", "val_mean_cosine",
                                    "val_collapse_share"}
    assert "collapse_share" in _model(method="simclr").test_on_batch(views, labels, return_dict=True)
    # Other denominators and a positives cap have another all-equal value per anchor: only mean_cosine.
    assert set(_model(denominator="one_positive").test_on_batch(views, labels, return_dict=True)) == {
        "loss", "mean_cosine"
    }
    assert set(_model(positives_cap=2).test_on_batch(views, labels, return_dict=True)) == {"loss", "mean_cosine"}
    assert set(_model(collapse_metrics=False).test_on_batch(views, labels, return_dict=True)) == {"loss"}
    with pytest.raises(ValueError, match="`collapse_metrics` must be a bool, received: collapse_metrics=1"):
        _model(collapse_metrics=1)
    model = _model(collapse_metrics=False)
    assert model.get_config()["collapse_metrics"] is False
    assert SupConModel.from_config(model.get_config()).collapse_metrics is False


def _collapse(model):
    """Zero the head's output kernel: every embedding is then the same unit vector."""
    dense = model.head._output_dense
    dense.kernel.assign(tf.zeros_like(dense.kernel))
    dense.bias.assign(tf.ones_like(dense.bias))


def test_a_collapsed_model_logs_cosine_one_and_share_one_with_the_queue_in_the_contrast_size():
    views, labels = _batch(batch=8)
    model = _model(queue_size=24)
    model.compile(optimizer=keras.optimizers.SGD(0.0))  # nothing moves: the queue fills with the same vector
    _collapse(model)
    for step in range(3):  # the queue holds 0, 16, then 24 (full) rows: contrast sizes 16, 32, 40
        model.reset_metrics()
        logs = model.train_on_batch(views, labels, return_dict=True)
        assert logs["mean_cosine"] == pytest.approx(1.0, abs=1e-6), step
        assert logs["collapse_share"] == 1.0, step
        assert logs["loss"] == pytest.approx(math.log(16 + min(16 * step, 24) - 1), rel=1e-5), step


def test_two_replicas_average_their_local_mean_cosines():
    from supcon_tf import distribute

    # The project's CPU strategy (reduction to one device): a raw MirroredStrategy's collective instance keys
    # would clash with another test's in the same process.
    cpus = tf.config.list_logical_devices("CPU")
    strategy = distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])
    views, labels = _batch(batch=8)
    with strategy.scope():
        model = _model()
    logs = model.evaluate(tf.data.Dataset.from_tensors((views, labels)), verbose=0, return_dict=True)
    embeddings = model.embed_views(views, training=False).numpy()
    halves = [_mean_cosine_reference(embeddings[:4]), _mean_cosine_reference(embeddings[4:])]
    assert logs["mean_cosine"] == pytest.approx(np.mean(halves), abs=1e-6)
    assert logs["mean_cosine"] != pytest.approx(_mean_cosine_reference(embeddings), abs=1e-6)


# ---------------------------------------------------------------------------
# CollapseMonitor on synthetic logs.
# ---------------------------------------------------------------------------


def _feed(monitor, cosines):
    for epoch, value in enumerate(cosines):
        monitor.on_epoch_end(epoch, None if value is None else {"loss": 5.5, "mean_cosine": value})


def test_monitor_warns_once_after_the_span(capsys):
    records = []
    monitor = resilience.CollapseMonitor(0.99, 2, on_collapse=records.append)
    _feed(monitor, [0.95, 0.995, 0.97, 0.99, None, 0.999, 0.9999, 0.999])
    # 0.995 alone is no span; 0.99 (at the threshold) then 0.999 (epoch 4 had no mean_cosine) make one at epoch 5,
    # which the message calls epoch 6 (as Keras shows it); the record keeps the 0-based index of the CSV rows.
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: training collapsed at epoch 6: the mean cosine between the embeddings is 0.999000 (at or above "
        "--collapse_cosine 0.99 for 2 epochs in a row), so the loss sits at its all-equal value and its gradient "
        "vanishes: try warm-up (--warmup_epochs), a higher --temperature, or a lower --learning_rate"
    ]
    record = {"epoch": 5, "first_epoch": 4, "mean_cosine": 0.999, "threshold": 0.99, "span": 2}
    assert monitor.collapsed == record and records == [dict(record, stopped=False)]
    assert monitor.state() == {"streak": 4, "collapsed": record}


def test_monitor_threshold_and_non_finite_values(capsys):
    monitor = resilience.CollapseMonitor(0.995, 1)
    _feed(monitor, [0.9949, float("nan"), float("inf"), 0.9])
    assert monitor.collapsed is None and monitor.streak == 0
    _feed(resilience.CollapseMonitor(0.995, 1, announce=False), [0.999])  # a worker that is not the chief
    assert capsys.readouterr().err == ""
    monitor = resilience.CollapseMonitor(1.0, 1)
    _feed(monitor, [0.9999999, 1.0])
    assert monitor.collapsed["epoch"] == 1


def test_monitor_stops_with_collapsed_at_every_collapsed_span(capsys):
    records = []
    monitor = resilience.CollapseMonitor(0.99, 1, stop=True, on_collapse=records.append)
    monitor.on_epoch_end(0, {"mean_cosine": 0.5})
    with pytest.raises(resilience.Collapsed) as raised:
        monitor.on_epoch_end(1, {"mean_cosine": 0.998})
    assert capsys.readouterr().err == ""  # the binary prints the exception's line, nothing else
    error = raised.value
    assert (error.epoch, error.first_epoch, error.drop_from_epoch, error.exit_status) == (1, 1, 0, 6)
    assert str(error).startswith("training collapsed at epoch 2: the mean cosine between the embeddings is 0.998000")
    assert "the backups from epoch 1 on are dropped" in str(error) and "--warmup_epochs" in str(error)
    assert records == [dict(monitor.collapsed, stopped=True)]
    # A resumed monitor (state from a backup) with an earlier collapse on record still stops.
    resumed = resilience.CollapseMonitor(0.99, 1, stop=True, state=monitor.state())
    with pytest.raises(resilience.Collapsed):
        resumed.on_epoch_end(2, {"mean_cosine": 0.999})
    assert resumed.collapsed["epoch"] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(threshold=0.0), r"`threshold` must be a number in \(0, 1\], received: threshold=0.0"),
        (dict(threshold=1.5), "threshold=1.5"),
        (dict(threshold=True), "threshold=True"),
        (dict(span=0), "`span` must be an int >= 1, received: span=0"),
        (dict(span=1.0), "span=1.0"),
        (dict(stop="yes"), "`stop` must be a bool, received: stop='yes'"),
        (dict(announce=None), "`announce` must be a bool"),
        (dict(on_collapse=3), "`on_collapse` must be callable or None"),
        (dict(state=[1]), "`state` must be None or a dict"),
        (dict(state={"streak": "2"}), "`state` must be None or a dict"),
    ],
)
def test_monitor_validates_its_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resilience.CollapseMonitor(**kwargs)


def test_collapsed_has_its_own_exit_status_and_one_line():
    error = resilience.Collapsed(3, 0.9991, 0.995, 2)
    outcome = errors.classify(error)
    assert errors.EXIT_COLLAPSED == resilience.EXIT_COLLAPSED == 6
    assert (outcome.status, outcome.internal, outcome.plain) == (6, False, False)
    assert outcome.line == str(error) and "\n" not in outcome.line
    assert errors.EXIT_STATUSES[6][0] == "collapsed" and "\n    6       collapsed" in errors.__doc__
    assert (error.first_epoch, error.drop_from_epoch) == (2, 1)


def test_a_collapse_drops_the_backups_from_the_epoch_before_it(tmp_path):
    store = BackupStore(str(tmp_path / "backup"), keep=10)
    os.makedirs(store.folder)
    for step in (4, 8, 9, 12):
        for path in store._paths(step):
            open(path, "w").close()
    trainer = runner._StageTrainer.__new__(runner._StageTrainer)  # only what _keeping_good_backups reads
    trainer.store, trainer.steps_per_epoch = store, 4
    with pytest.raises(resilience.Collapsed):
        with trainer._keeping_good_backups():
            raise resilience.Collapsed(3, 0.999, 0.995, 1)  # epoch 3 collapsed: epoch 2 (steps 9..12) may be too
    assert sorted(store._steps(store.folder)) == [4, 8]


# ---------------------------------------------------------------------------
# Config: fields, flags, resumable.
# ---------------------------------------------------------------------------


def test_config_fields_defaults_validation_and_resumable():
    config = RunConfig()
    assert (config.runtime.collapse_cosine, config.runtime.collapse_epochs, config.runtime.stop_on_collapse) == (0.995, 1, False)
    assert RunConfig.from_flat(collapse_cosine=1, collapse_epochs=3, stop_on_collapse=True).runtime.collapse_epochs == 3
    for kwargs, match in [
        (dict(collapse_cosine=0.0), r"`collapse_cosine` must be in \(0, 1\], received: collapse_cosine=0.0"),
        (dict(collapse_cosine=1.01), "collapse_cosine=1.01"),
        (dict(collapse_cosine=True), "collapse_cosine=True"),
        (dict(collapse_epochs=0), "`collapse_epochs` must be an int >= 1, received: collapse_epochs=0"),
        (dict(stop_on_collapse="no"), "`stop_on_collapse` must be a bool, received: stop_on_collapse='no'"),
    ]:
        with pytest.raises(ValueError, match=match):
            RunConfig.from_flat(**kwargs)
    from experiments import flagging

    helps = flagging.help_texts(RunConfig)
    for name in ("collapse_cosine", "collapse_epochs", "stop_on_collapse"):
        assert helps[name] and name in run_folder.RESUMABLE_FIELDS


# ---------------------------------------------------------------------------
# Real digits runs through the binary.
# ---------------------------------------------------------------------------

# The first report registration's SupCon settings (experiments/report/config.py SHARED on the digits_supcon preset,
# no warm-up) at temperature 0.05, seed 4, two epochs.
REPRO = [
    "--preset=digits_supcon", "--temperature=0.05", "--warmup_epochs=0", "--seed=4", "--epochs=2",
    "--validation_fraction=0.2",
    "--learning_rate_scaling=none", "--verbose=0", "--noexport",
]


def _pretrain(model_dir, *flags):
    """`python -m experiments.pretrain` through its entry in this process (its output, exit status and files)."""
    return run_binary_in_process("pretrain", *REPRO, f"--model_dir={model_dir}", *flags)


def _collapse_lines(stderr):
    return [line for line in stderr.splitlines() if "collapsed" in line]


def _rows(model_dir):
    with open(os.path.join(model_dir, "training_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # runs of several epochs through the runner: 4 s each
def test_the_report_settings_collapse_with_one_line_and_metrics_json_says_so(tmp_path):
    model_dir = tmp_path / "run"
    result = _pretrain(model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _rows(model_dir)
    cosines = [float(row["mean_cosine"]) for row in rows]
    assert cosines[0] < 0.995 <= cosines[1], cosines  # the metric itself shows the collapse in epoch 1
    assert float(rows[1]["collapse_share"]) > 0.3 and float(rows[1]["loss"]) == pytest.approx(math.log(255), abs=0.01)
    assert "val_mean_cosine" in rows[0] and "val_collapse_share" in rows[0]
    lines = _collapse_lines(result.stderr)
    assert lines == [
        f"warning: training collapsed at epoch 2: the mean cosine between the embeddings is {cosines[1]:.6f} "
        "(at or above --collapse_cosine 0.995), so the loss sits at its all-equal value and its gradient vanishes: "
        "try warm-up (--warmup_epochs), a higher --temperature, or a lower --learning_rate"
    ]
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["collapsed"]["epoch"] == 1 and metrics["collapsed"]["mean_cosine"] == pytest.approx(cosines[1])
    state = json.loads((model_dir / "run_state.json").read_text())
    assert [(c["epoch"], c["stopped"]) for c in state["collapses"]] == [(1, False)]
    # TensorBoard gets the metrics too (Keras metrics: epoch_mean_cosine, epoch_collapse_share).
    events = b"".join(open(path, "rb").read() for path in glob.glob(str(model_dir / "logs" / "*" / "*" / "*")))
    assert b"epoch_mean_cosine" in events and b"epoch_collapse_share" in events


def _stop(model_dir):
    stopped = _pretrain(model_dir, "--stop_on_collapse", "--backup_every_steps=3")
    assert stopped.returncode == 6, stopped.stderr[-3000:]
    return stopped


@pytest.mark.slow  # runs of several epochs through the runner: 4 s each
def test_stop_on_collapse_exits_6_with_one_line_and_drops_the_collapsed_backups(tmp_path):
    model_dir = tmp_path / "run"
    stopped = _stop(model_dir)
    lines = [line for line in stopped.stderr.splitlines() if ": error: " in line or "warning:" in line]
    assert len(lines) == 1 and lines[0].startswith("pretrain: error: training collapsed at epoch 2: "), lines
    assert "the backups from epoch 1 on are dropped" in lines[0]
    assert not (model_dir / "FINISHED").exists() and not (model_dir / "metrics.json").exists()
    # Epoch 0 ends collapsed already (its mean mixes the steps before the collapse): none of its backups
    # (steps 3, 6, 8) is kept, nor epoch 1's (11, 14).
    assert BackupStore(str(model_dir / "backup"))._steps(str(model_dir / "backup" / "worker_0")) == set()
    state = json.loads((model_dir / "run_state.json").read_text())
    assert [(c["epoch"], c["stopped"]) for c in state["collapses"]] == [(1, True)]
    assert "exit status 6" in (model_dir / "error.log").read_text()
    rows = _rows(model_dir)  # the collapsed epoch's row is written: its mean_cosine shows it
    assert len(rows) == 2 and float(rows[1]["mean_cosine"]) >= 0.995


@pytest.mark.slow
def test_a_stopped_run_reruns_with_a_higher_temperature_without_collapse(tmp_path):
    model_dir = tmp_path / "run"
    _stop(model_dir)
    # --temperature is resumable; no backup was kept, so the run starts again from step 0, and does not collapse.
    again = _pretrain(model_dir, "--stop_on_collapse", "--backup_every_steps=3", "--temperature=0.1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _collapse_lines(again.stderr) == []
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["collapsed"] is False and metrics["restarts"] == 1
    assert max(float(row["mean_cosine"]) for row in _rows(model_dir)) < 0.99


@pytest.mark.slow  # runs of several epochs through the runner: 4 s each
def test_warm_up_avoids_the_collapse(tmp_path):
    model_dir = tmp_path / "run"
    result = _pretrain(model_dir, "--warmup_epochs=1", "--stop_on_collapse")
    assert result.returncode == 0, result.stderr[-3000:]
    assert _collapse_lines(result.stderr) == []
    assert json.loads((model_dir / "metrics.json").read_text())["collapsed"] is False
    assert max(float(row["mean_cosine"]) for row in _rows(model_dir)) < 0.99
