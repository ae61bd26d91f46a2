"""The class-balanced P x K sampler: batch composition, epoch coverage, determinism, replicas, config and runner wiring."""

import collections
import json

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import data, distribute, runner
from supcon_tf.config import RunConfig


def _check_batches(batches, labels, p, k):
    assert batches.ndim == 2 and batches.shape[1] == p * k
    for row in batches:
        counts = collections.Counter(labels[row].tolist())
        assert len(counts) == p and set(counts.values()) == {k}, counts


@pytest.mark.parametrize(
    "class_sizes, p, k",
    [
        ((8, 8, 8, 8), 2, 4),  # balanced, exact multiples
        ((13, 5, 9, 2, 7), 3, 4),  # imbalanced, remainders, one class smaller than K
        ((40, 3, 3), 2, 2),  # one dominant class: extra batches are topped up from the others
        ((6, 6), 2, 1),
    ],
)
def test_every_batch_has_p_classes_with_k_samples_and_an_epoch_covers_the_data(class_sizes, p, k):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(len(class_sizes)) * 7 + 3, class_sizes))  # any label values
    batches = data.class_balanced_indices(labels, classes_per_batch=p, samples_per_class=k, seed=1)
    _check_batches(batches, labels, p, k)
    assert set(batches.ravel().tolist()) == set(range(len(labels)))  # every sample, at least once
    # No more batches than needed: ceil(chunks / P), or the largest class's chunk count.
    chunks = [-(-n // k) for n in class_sizes]
    assert len(batches) == max(-(-sum(chunks) // p), max(chunks))
    # Within a class, a sample repeats in a batch only when the class has fewer than K samples.
    for row in batches:
        for label, count in collections.Counter(labels[row].tolist()).items():
            members = row[labels[row] == label]
            if np.sum(labels == label) >= k:
                assert len(set(members.tolist())) == count


def test_epochs_are_deterministic_per_seed_and_reshuffled():
    labels = np.repeat(np.arange(5), 10)
    draw = lambda seed, epoch: data.class_balanced_indices(  # noqa: E731
        labels, classes_per_batch=2, samples_per_class=5, seed=seed, epoch=epoch
    )
    np.testing.assert_array_equal(draw(3, 0), draw(3, 0))
    assert not np.array_equal(draw(3, 0), draw(3, 1))
    assert not np.array_equal(draw(3, 0), draw(4, 0))
    # The samples inside a batch are shuffled: class blocks are not contiguous.
    assert any(len(set(labels[row[:5]].tolist())) > 1 for row in draw(3, 0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes_per_batch=5), "classes_per_batch"),
        (dict(classes_per_batch=0), "classes_per_batch"),
        (dict(samples_per_class=0), "samples_per_class"),
        (dict(samples_per_class=2.0), "samples_per_class"),
        (dict(seed=-1), "seed"),
        (dict(epoch=-1), "epoch"),
        (dict(labels=np.array([0.0, 1.0])), "labels"),
        (dict(labels=np.zeros((2, 2), int)), "labels"),
    ],
)
def test_class_balanced_indices_rejects_bad_arguments(kwargs, match):
    args = dict(labels=np.repeat(np.arange(4), 3), classes_per_batch=2, samples_per_class=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        data.class_balanced_indices(**args)


def _indexed_source(labels):
    """Images whose first pixel is the sample's index, so batches can be traced back."""
    images = np.zeros((len(labels), 4, 4, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(len(labels))
    return data.from_arrays(images, labels)


def _identity_augment(images, seed):
    del seed
    return tf.cast(images, tf.float32)


def test_dataset_yields_p_by_k_multiview_batches_covering_the_source():
    labels = np.repeat(np.arange(6), [7, 7, 5, 9, 4, 8])
    p, k = 3, 2
    dataset = data.make_class_balanced_dataset(
        _indexed_source(labels), classes_per_batch=p, samples_per_class=k, num_views=3, augment=_identity_augment, seed=2
    )
    assert dataset.element_spec[0].shape.as_list() == [p * k, 3, 4, 4, 1]
    seen, rows = set(), []
    for views, batch_labels in dataset:
        index = views.numpy()[:, 0, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(views.numpy()[:, 2, 0, 0, 0], index)  # every view is of the same sample
        np.testing.assert_array_equal(batch_labels.numpy(), labels[index])
        rows.append(index)
        seen.update(index.tolist())
    _check_batches(np.stack(rows), labels, p, k)
    assert seen == set(range(len(labels)))
    expected = data.class_balanced_indices(labels, classes_per_batch=p, samples_per_class=k, seed=2)
    np.testing.assert_array_equal(np.stack(rows), expected)  # one epoch, as documented


def test_repeated_dataset_draws_new_epochs():
    labels = np.repeat(np.arange(4), 4)
    dataset = data.make_class_balanced_dataset(
        _indexed_source(labels), classes_per_batch=2, samples_per_class=2, augment=_identity_augment, repeat=True
    )
    per_epoch = len(data.class_balanced_indices(labels, classes_per_batch=2, samples_per_class=2))
    rows = [v.numpy()[:, 0, 0, 0, 0].astype(int) for v, _ in dataset.take(2 * per_epoch)]
    first, second = np.stack(rows[:per_epoch]), np.stack(rows[per_epoch:])
    np.testing.assert_array_equal(
        second, data.class_balanced_indices(labels, classes_per_batch=2, samples_per_class=2, epoch=1)
    )
    assert not np.array_equal(first, second)


def test_two_replicas_split_each_global_p_by_k_batch():
    cpus = tf.config.list_logical_devices("CPU")
    if len(cpus) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest.py)")
    strategy = distribute.get_strategy("mirrored", devices=[d.name for d in cpus[:2]])
    labels = np.repeat(np.arange(5), 6)
    dataset = data.make_class_balanced_dataset(
        _indexed_source(labels), classes_per_batch=2, samples_per_class=4, augment=_identity_augment, seed=1
    )
    expected = data.class_balanced_indices(labels, classes_per_batch=2, samples_per_class=4, seed=1)
    for step, (views, _) in enumerate(strategy.experimental_distribute_dataset(dataset)):
        shards = [t.numpy()[:, 0, 0, 0, 0].astype(int) for t in strategy.experimental_local_results(views)]
        assert [len(s) for s in shards] == [4, 4]
        np.testing.assert_array_equal(np.concatenate(shards), expected[step])  # replica order = batch order


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(classes_per_batch=0), "classes_per_batch"),
        (dict(samples_per_class=-1), "samples_per_class"),
        (dict(classes_per_batch=7), "classes_per_batch"),  # only 6 classes
        (dict(augment=None), "augment"),
        (dict(num_views=0), "num_views"),
        (dict(dataset=[1, 2]), "dataset"),
    ],
)
def test_make_class_balanced_dataset_rejects_bad_arguments(kwargs, match):
    args = dict(
        dataset=_indexed_source(np.repeat(np.arange(6), 2)),
        classes_per_batch=2,
        samples_per_class=2,
        augment=_identity_augment,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        data.make_class_balanced_dataset(**args)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(sampler="stratified"), "sampler"),
        (dict(sampler="class_balanced", batch_size=30, samples_per_class=4), "samples_per_class"),
        (dict(sampler="class_balanced", batch_size=64, samples_per_class=4), "samples_per_class"),  # 16 > 10 classes
        (dict(samples_per_class=0), "samples_per_class"),
        (dict(sampler="class_balanced", dataset="imagenet2012", batch_size=64), "sampler"),
    ],
)
def test_run_config_rejects_bad_sampler_options(changes, field):
    with pytest.raises(ValueError, match=field):
        RunConfig.from_flat(**changes)


def test_runner_builds_pk_training_batches_from_the_config():
    config = RunConfig.from_flat(image_size=8, batch_size=12, sampler="class_balanced", samples_per_class=3, seed=4)
    source, _, _ = data.load_source(config, "train")
    views, labels = next(iter(runner.train_dataset(config, source)))
    assert views.shape == (12, 2, 8, 8, 1)
    counts = collections.Counter(labels.numpy().tolist())
    assert len(counts) == 4 and set(counts.values()) == {3}


@pytest.mark.slow
def test_runner_trains_with_pk_batches_a_queue_and_a_momentum_encoder(tmp_path):
    config = RunConfig.from_flat(
        model_dir=str(tmp_path / "run"),
        image_size=8,
        encoder_width=0.25,
        head_hidden=16,
        embedding_dim=8,
        batch_size=16,
        sampler="class_balanced",
        samples_per_class=4,
        queue_size=48,
        queue_warmup_steps=1,
        key_momentum=0.9,
        epochs=1,
        steps_per_epoch=3,
        export=False,
        verbose=0,
    )
    metrics = runner.run(config)
    assert np.isfinite(metrics["final_train_loss"])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["sampler"], saved["queue_size"], saved["key_momentum"]) == ("class_balanced", 48, 0.9)
    import keras

    model = keras.saving.load_model(str(tmp_path / "run" / "model.keras"))
    assert model.queue_size == 48 and model.key_momentum == 0.9
    assert int(model.memory.filled.numpy()) == 48  # 3 steps x 16 samples x 2 views, wrapped
    assert int(model.memory.steps.numpy()) == 3


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(steps=0), "steps"),
        (dict(seeds=()), "seeds"),
        (dict(seeds=(1, 1)), "seeds"),
        (dict(arms=("b16_plain", "b32_plain")), "arms"),
        (dict(samples_per_class=3), "samples_per_class"),
        (dict(key_momentum=1.0), "key_momentum"),
        (dict(queue_warmup_steps=-1), "queue_warmup_steps"),
    ],
)
def test_small_batch_experiment_rejects_bad_settings(changes, match):
    from experiments.small_batch import SmallBatchConfig

    with pytest.raises(ValueError, match=match):
        SmallBatchConfig(output_dir="runs/x", **changes)


def test_small_batch_experiment_arms_differ_only_in_their_small_batch_options():
    from experiments.small_batch import ARMS, SmallBatchConfig

    config = SmallBatchConfig(output_dir="runs/x", steps=7)
    runs = {arm: config.pretrain_config(arm, 0, f"runs/x/{arm}").to_dict() for arm in ARMS}
    varying = {"model_dir", "batch_size", "queue_size", "queue_warmup_steps", "key_momentum", "sampler", "samples_per_class"}
    for arm, values in runs.items():
        assert values["steps_per_epoch"] == 7 and values["epochs"] == 1  # same optimizer steps for every arm
        assert {k: v for k, v in values.items() if k not in varying} == {
            k: v for k, v in runs["b16_plain"].items() if k not in varying
        }
    assert runs["b256_plain"]["batch_size"] == 256 and runs["b16_pk"]["sampler"] == "class_balanced"
    assert runs["b16_queue_momentum"]["key_momentum"] == 0.95 and runs["b16_queue"]["key_momentum"] is None


@pytest.mark.slow
def test_small_batch_experiment_runs_end_to_end_tiny(tmp_path):
    from helpers import run_binary_in_process  # `python -m experiments.small_batch`, in this process

    result = run_binary_in_process(
        "small_batch", f"--output_dir={tmp_path}", "--steps=2", "--seeds=0,1",
        "--probe_epochs=1", "--arms=b16_queue_momentum,b16_pk",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| b16_queue_momentum | 16 | 31 + 512 queued |" in result.stdout and "| b16_pk |" in result.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["arm"], r["seed"]) for r in results["runs"]] == [
        ("b16_queue_momentum", 0), ("b16_queue_momentum", 1), ("b16_pk", 0), ("b16_pk", 1)
    ]
    assert (tmp_path / "results.md").read_text().startswith("| arm |")
