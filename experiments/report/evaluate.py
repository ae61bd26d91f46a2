"""The final evaluation: the only code of the report that reads the test split, once, after all training.

For every trained classifier (SupCon / SimCLR linear probes, CE's own
classifier, and the linear probe on CE's frozen encoder): test top-1, kNN
top-1 of its encoder (memory: the training part the run trained on), ECE
(`Rules.ece_bins` bins) and mean confidence, then top-1 error and ECE under every
corruption and severity (`supcon_tf.evaluation.evaluate_corruptions`, one
corrupted copy of the test split fed to every model, of every seed). mCE and
relative mCE use, per comparison, the CE classifier's errors averaged over
seeds as the baseline (CE scores 100 by construction).
"""

from __future__ import annotations

import numpy as np

MEMORY_BATCH = 512


def _comparison_models(comparisons):
    """`{comparison: {method: [(seed, classifier path)]}}`; CE's probe appears as "ce_probe"."""
    out = {}
    for name, comparison in comparisons.items():
        methods = {}
        for method, runs in comparison["runs"].items():
            methods[method] = [(r["seed"], r["classifier"]) for r in runs]
            if method == "ce" and all("probe_classifier" in r for r in runs) and name == "equal_epochs":
                methods["ce_probe"] = [(r["seed"], r["probe_classifier"]) for r in runs]
        out[name] = methods
    return out


def _bins_dict(bins):
    return {
        "lower": bins.lower.tolist(),
        "upper": bins.upper.tolist(),
        "count": bins.count.tolist(),
        "accuracy": bins.accuracy.tolist(),
        "confidence": bins.confidence.tolist(),
    }


def evaluate_on_test(config, comparisons):
    """Evaluates every classifier of `comparisons` on the test split (read here, once).

    Returns:
      `{"test_size", "comparisons": {comparison: {method: [per-seed entry]}},
      "bins": {comparison: {method: pooled reliability bins}},
      "baseline": {comparison: {"clean_error", "errors"}}}`.
    """
    import keras
    import tensorflow as tf

    from experiments.report import monitor
    from supcon_tf import data, evaluation, runner
    from supcon_tf import models as _models  # noqa: F401  (registers the classes for load_model)

    rules = config.rules
    stage = config.stages["ce"]
    test_source, test_size, _ = data.load_source(stage, "test")  # the one read of the test split
    test_plain = runner.eval_dataset(stage, test_source, batch_size=512)

    plan = _comparison_models(comparisons)
    by_seed = {}
    for methods in plan.values():
        for pairs in methods.values():
            for seed, path in pairs:
                by_seed.setdefault(seed, [])
                if path not in by_seed[seed]:
                    by_seed[seed].append(path)

    scored, probabilities, loaded = {}, {}, {}
    for seed, paths in sorted(by_seed.items()):
        train_images, train_labels, _, _ = monitor.split_arrays(config.stage("ce", seed=seed))
        memory = tf.data.Dataset.from_tensor_slices((train_images, train_labels)).batch(MEMORY_BATCH)
        for path in paths:
            model = loaded[path] = keras.saving.load_model(path, compile=False)
            probs, labels = evaluation.predict_probabilities(model, test_plain)
            memory_features, memory_labels = evaluation.extract_features(model, memory)
            test_features, _ = evaluation.extract_features(model, test_plain)
            scored[path] = {
                "seed": seed,
                "top1": evaluation.accuracy(probs, labels),
                "ece": evaluation.expected_calibration_error(probs, labels, num_bins=rules.ece_bins),
                "confidence": float(probs.max(axis=1).mean()),
                "knn_top1": evaluation.knn_top1(
                    memory_features, memory_labels, test_features, labels, k=rules.knn_k, temperature=rules.knn_temperature
                ),
            }
            probabilities[path] = (probs, labels)
    # Every classifier of every seed in one call: each corrupted test batch is made once (the same images as one
    # call per seed would make: they are seeded by the corruption seed and the batch index).
    corrupted = evaluation.evaluate_corruptions(loaded, test_plain, seed=rules.corruption_seed, num_bins=rules.ece_bins)
    for path, result in corrupted.items():
        scored[path]["corruption"] = result
    del loaded
    keras.backend.clear_session()

    out = {"test_size": int(test_size), "comparisons": {}, "bins": {}, "baseline": {}}
    for comparison, methods in plan.items():
        ce_results = [scored[path]["corruption"] for _, path in methods["ce"]]
        names = list(ce_results[0].errors)
        baseline = {c: np.mean([r.errors[c] for r in ce_results], axis=0) for c in names}
        baseline_clean = float(np.mean([r.clean_error for r in ce_results]))
        out["baseline"][comparison] = {"clean_error": baseline_clean, "errors": baseline}
        out["comparisons"][comparison] = {}
        out["bins"][comparison] = {}
        for method, pairs in methods.items():
            entries = []
            for _, path in pairs:
                entry = dict(scored[path])
                result = entry.pop("corruption")
                entry.update(
                    mce=evaluation.mean_corruption_error(result.errors, baseline),
                    relative_mce=evaluation.relative_mean_corruption_error(
                        result.errors, result.clean_error, baseline, baseline_clean
                    ),
                    corruption_errors=evaluation.corruption_errors(result.errors, baseline),
                    corrupted_top1=float(1 - np.mean([result.errors[c] for c in names])),
                    corrupted_ece=float(np.mean([result.eces[c] for c in names])),
                    accuracy_by_severity=result.accuracy_by_severity().tolist(),
                    ece_by_severity=result.ece_by_severity().tolist(),
                    corruption=result.to_dict(),
                    classifier=path,
                )
                entries.append(entry)
            out["comparisons"][comparison][method] = entries
            pooled = [probabilities[path] for _, path in pairs]
            out["bins"][comparison][method] = _bins_dict(
                evaluation.calibration_bins(
                    np.concatenate([p for p, _ in pooled]), np.concatenate([y for _, y in pooled]), rules.ece_bins
                )
            )
    return out
