"""The blockwise form's default-loss path (issue 14): values, gradients and memory.

`variant="out"`, `denominator="all"`, no cap and `[batch]` (or no) labels take
`losses._blockwise_out_core`: positives from per-key sums, one matmul per logit
block with the per-row terms folded in, the anchors' own entries masked on a
diagonal. Two layouts: "paired" (anchors == contrast: every sample an anchor,
contrast_mode "all", no queue; each pair of blocks visited once) and
"streamed" (anything else: offsets, contrast_mode "one", a queue). Both are
checked against the dense form in float64 to rounding level, across block
counts (odd, even, one, padded), negative per-anchor weights, the overflow
fallback (tiny temperatures), eagerly, in a tf.function and under XLA; and
their TensorFlow tensor peak is bounded by a few [rows, dim] / [rows, block]
buffers, far below the dense logits.
"""

import numpy as np
import pytest
import tensorflow as tf

from supcon_tf.losses import supcon_loss, supcon_per_anchor_loss


def _features(rng, batch, views, dim, dtype=np.float64):
    z = rng.normal(size=(batch, views, dim)).astype(dtype)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def _loss_and_grad(z, labels, weights, implementation, mode, **kwargs):
    """Per-anchor losses and the gradient of sum(weights * loss); mode: eager, function or xla."""

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            per_anchor = supcon_per_anchor_loss(x, labels, implementation=implementation, **kwargs)
            total = tf.reduce_sum(per_anchor.loss * weights)
        return per_anchor.loss, tape.gradient(total, x)

    if mode != "eager":
        run = tf.function(run, jit_compile=mode == "xla")
    loss, grad = run(tf.constant(z))
    return loss.numpy(), grad.numpy()


# (batch, views, block_size, extra kwargs): paired with 1, 2 (even), 3 (odd), 4 (even) blocks and padding,
# then streamed layouts.
_LAYOUTS = {
    "paired_one_block": (5, 2, 64, {}),
    "paired_two_blocks": (6, 2, 6, {}),
    "paired_odd_padded": (7, 2, 5, {}),
    "paired_even_padded": (9, 3, 7, {}),
    "paired_block_1": (6, 2, 1, {}),
    "streamed_offset": (9, 2, 4, dict(anchor_offset=2, num_anchor_samples=5)),
    "streamed_one": (8, 3, 5, dict(contrast_mode="one")),
    "streamed_queue": (7, 2, 4, dict(queue=True)),
}


@pytest.mark.parametrize("layout", sorted(_LAYOUTS))
@pytest.mark.parametrize("labels_kind", ["int", "float", "none"])
def test_default_path_matches_dense_in_float64(layout, labels_kind):
    batch, views, block_size, kwargs = _LAYOUTS[layout]
    rng = np.random.default_rng(hash((layout, labels_kind)) % 2**32)
    z = _features(rng, batch, views, 6)
    z[1] = z[0]  # identical samples: ties in the logits
    labels = {"int": rng.integers(0, 3, size=batch), "float": rng.integers(0, 3, size=batch).astype(np.float32),
              "none": None}[labels_kind]
    kwargs = dict(kwargs, temperature=0.2, block_size=block_size)
    if kwargs.pop("queue", False):
        kwargs["queue_features"] = _features(rng, 5, 1, 6)[:, 0]
        kwargs["queue_labels"] = None if labels is None else rng.integers(0, 3, size=5).astype(labels.dtype)
    anchors = kwargs.get("num_anchor_samples", batch)
    anchor_views = 1 if kwargs.get("contrast_mode") == "one" else views
    weights = rng.normal(size=(anchors, anchor_views))  # both signs: the gradient's sign handling
    dense_loss, dense_grad = _loss_and_grad(z, labels, weights, "dense", "eager", **kwargs)
    for mode in ("eager", "function"):
        loss, grad = _loss_and_grad(z, labels, weights, "blockwise", mode, **kwargs)
        np.testing.assert_allclose(loss, dense_loss, rtol=1e-10, atol=1e-12, err_msg=mode)
        np.testing.assert_allclose(grad, dense_grad, rtol=1e-9, atol=1e-12, err_msg=mode)


@pytest.mark.parametrize("layout", ["paired_odd_padded", "streamed_offset"])
def test_default_path_under_xla(layout):
    batch, views, block_size, kwargs = _LAYOUTS[layout]
    rng = np.random.default_rng(7)
    z = _features(rng, batch, views, 6, np.float32)
    labels = rng.integers(0, 3, size=batch)
    kwargs = dict(kwargs, temperature=0.1, block_size=block_size)
    weights = np.ones((kwargs.get("num_anchor_samples", batch), views), np.float32)
    dense_loss, dense_grad = _loss_and_grad(z, labels, weights, "dense", "function", **kwargs)
    loss, grad = _loss_and_grad(z, labels, weights, "blockwise", "xla", **kwargs)
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", ["paired_even_padded", "streamed_one"])
def test_tiny_temperature_overflow_fallback(layout):
    # tau = 0.005 with float32: logits reach 200, the mean positive logit is far below the row maximum,
    # so exp(s - mean) overflows and the checked (online log-sum-exp) pass must take over.
    batch, views, block_size, kwargs = _LAYOUTS[layout]
    rng = np.random.default_rng(11)
    z = _features(rng, batch, views, 6, np.float32)
    z[2] = z[3]
    labels = rng.integers(0, 2, size=batch)
    kwargs = dict(kwargs, temperature=0.005, block_size=block_size)
    anchor_views = 1 if kwargs.get("contrast_mode") == "one" else views
    weights = np.ones((batch, anchor_views), np.float32)
    dense_loss, dense_grad = _loss_and_grad(z, labels, weights, "dense", "function", **kwargs)
    loss, grad = _loss_and_grad(z, labels, weights, "blockwise", "function", **kwargs)
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-5, atol=1e-3)
    scale = float(np.abs(dense_grad).max())
    np.testing.assert_allclose(grad, dense_grad, rtol=1e-4, atol=1e-5 * scale)


def _tensor_peak_mib(fn, *args):
    """Peak of TensorFlow's CPU allocator during one call (already traced), above what was alive before."""
    tf.config.experimental.reset_memory_stats("CPU:0")
    before = tf.config.experimental.get_memory_info("CPU:0")["current"]
    fn(*args)
    return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 2**20


@pytest.mark.parametrize("queue", [False, True], ids=["paired", "streamed"])
def test_tensor_peak_is_a_few_row_buffers(queue):
    # 2048 samples x 2 views (4096 rows), dim 128, the default block (256): a [rows, dim] buffer is
    # 2 MiB, a [rows, block] one 4 MiB, the dense logits alone 64 MiB (dense forward + backward: ~270).
    batch, dim = 2048, 128
    rng = np.random.default_rng(3)
    x = tf.constant(_features(rng, batch, 2, dim, np.float32))
    labels = tf.constant(rng.integers(0, 10, size=batch))
    kwargs = {}
    if queue:
        kwargs = dict(queue_features=tf.constant(_features(rng, 512, 1, dim, np.float32)[:, 0]),
                      queue_labels=tf.constant(rng.integers(0, 10, size=512)))

    @tf.function
    def step(features, ids):
        with tf.GradientTape() as tape:
            tape.watch(features)
            loss = supcon_loss(features, ids, implementation="blockwise", **kwargs)
        return loss, tape.gradient(loss, features)

    step.get_concrete_function(x, labels)
    peak = _tensor_peak_mib(step, x, labels)
    rows_dim, rows_block, logits = 2.0, 4.0, 64.0
    assert peak < 8 * rows_dim + 3 * rows_block, f"tensor peak {peak:.1f} MiB"
    assert peak < 0.5 * logits
