"""Tests for supcon_tf.optimizers: WarmupCosineDecay and LARS against NumPy references."""

import copy
import math
import os
import re
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import _keras_compat
from supcon_tf.optimizers import LARS, WarmupCosineDecay

RTOL = 1e-5
ATOL = 1e-7


# ---------------------------------------------------------------------------
# NumPy references, written straight from the docstring equations (float64).


def np_schedule(step, base, total, warmup=0, start=0.0, final=0.0):
    step = max(float(step), 0.0)
    if step >= total:
        return final
    if step < warmup:
        return base * (start + (1.0 - start) * step / warmup)
    progress = (step - warmup) / (total - warmup)
    return final + (base - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


def np_lars_step(w, g, v, lr, momentum, wd, eta, nesterov, decay, adapt):
    """One LARS step; returns (new_w, new_v, trust)."""
    w = np.asarray(w, np.float64)
    g = np.asarray(g, np.float64)
    v = np.asarray(v, np.float64)
    if decay:
        g = g + wd * w
    trust = 1.0
    if adapt:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g)
        if w_norm > 0 and g_norm > 0:
            trust = eta * w_norm / g_norm
    scaled_lr = lr * trust
    v = momentum * v + scaled_lr * g
    update = momentum * v + scaled_lr * g if nesterov else v
    return w - update, v, trust


def _var(value, name):
    return keras.Variable(np.asarray(value, np.float32), name=name)


# ---------------------------------------------------------------------------
# WarmupCosineDecay


def test_schedule_hand_computed_values():
    # b=0.5, T=100, W=10, start 0.1 (lr(0)=0.05), final 0.01.
    schedule = WarmupCosineDecay(
        0.5, total_steps=100, warmup_steps=10, warmup_start=0.1, final_learning_rate=0.01
    )
    expected = {
        0: 0.05,  # warmup_start * base
        5: 0.05 + 0.5 * (0.5 - 0.05),  # half-way up the line: 0.275
        10: 0.5,  # end of warm-up: base
        55: (0.5 + 0.01) / 2,  # half-way through the cosine: mean of base and final
        100: 0.01,  # total_steps: final
        150: 0.01,  # beyond: constant final
    }
    for step, value in expected.items():
        np.testing.assert_allclose(float(schedule(step)), value, rtol=RTOL, err_msg=f"step {step}")


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(base=0.5, total=100, warmup=10, start=0.1, final=0.01),
        dict(base=2.0, total=7, warmup=0, start=0.0, final=0.0),
        dict(base=1.0, total=5, warmup=5, start=0.2, final=0.1),  # no cosine phase
        dict(base=0.3, total=1, warmup=0, start=0.0, final=0.3),  # constant
    ],
)
def test_schedule_matches_numpy_formula_inside_tf_function(kwargs):
    schedule = WarmupCosineDecay(
        kwargs["base"],
        total_steps=kwargs["total"],
        warmup_steps=kwargs["warmup"],
        warmup_start=kwargs["start"],
        final_learning_rate=kwargs["final"],
    )
    steps = np.arange(-1, kwargs["total"] + 3)
    got = tf.function(lambda s: tf.map_fn(schedule, s, fn_output_signature=tf.float32))(
        tf.constant(steps, tf.int64)
    )
    assert got.dtype == tf.float32
    expected = [np_schedule(s, **kwargs) for s in steps]
    np.testing.assert_allclose(got.numpy(), expected, rtol=RTOL, atol=ATOL)


def test_schedule_config_round_trip_and_serialization():
    schedule = WarmupCosineDecay(
        0.5, total_steps=100, warmup_steps=10, warmup_start=0.1, final_learning_rate=0.01
    )
    config = schedule.get_config()
    clone = WarmupCosineDecay.from_config(copy.deepcopy(config))
    assert clone.get_config() == config
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, WarmupCosineDecay)
    assert restored.get_config() == config
    assert float(restored(37)) == float(schedule(37))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(base_learning_rate=0.0, total_steps=10), "base_learning_rate"),
        (dict(base_learning_rate=float("inf"), total_steps=10), "base_learning_rate"),
        (dict(base_learning_rate=0.1, total_steps=0), "total_steps"),
        (dict(base_learning_rate=0.1, total_steps=10.0), "total_steps"),
        (dict(base_learning_rate=0.1, total_steps=10, warmup_steps=11), "warmup_steps"),
        (dict(base_learning_rate=0.1, total_steps=10, warmup_steps=-1), "warmup_steps"),
        (dict(base_learning_rate=0.1, total_steps=10, warmup_start=1.5), "warmup_start"),
        (dict(base_learning_rate=0.1, total_steps=10, final_learning_rate=0.2), "final_learning_rate"),
        (dict(base_learning_rate=0.1, total_steps=10, final_learning_rate=-0.1), "final_learning_rate"),
    ],
)
def test_schedule_bad_arguments(kwargs, argument):
    received = re.escape(f"received: {argument}={kwargs[argument]!r}")
    with pytest.raises(ValueError, match=f"`{argument}`.*{received}"):
        WarmupCosineDecay(**kwargs)


# ---------------------------------------------------------------------------
# LARS: numerics against the NumPy reference


HP = dict(momentum=0.9, wd=0.01, eta=0.05)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_one_step_matches_numpy(nesterov):
    w0 = np.array([[1.0, -2.0], [3.0, 0.5]])
    g0 = np.array([[0.3, 0.1], [-0.2, 0.4]])
    lr = 0.7
    kernel = _var(w0, "kernel")
    opt = LARS(lr, momentum=HP["momentum"], weight_decay=HP["wd"], eta=HP["eta"], nesterov=nesterov)
    opt.apply([tf.constant(g0, tf.float32)], [kernel])
    w1, _, trust = np_lars_step(
        w0, g0, np.zeros_like(w0), lr, nesterov=nesterov, decay=True, adapt=True, **HP
    )
    assert 0.0 < trust < 1.0  # the ratio is really in play
    np.testing.assert_allclose(kernel.numpy(), w1, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_two_steps_mixed_variables_match_numpy(nesterov):
    """Momentum accumulates; a bias gets plain momentum SGD; zero norms give trust 1."""
    rng = np.random.default_rng(0)
    start = {
        "kernel": rng.normal(size=(3, 4)),  # decay + adaptation
        "bias": rng.normal(size=(4,)),  # default rule: excluded from both
        "zero_kernel": np.zeros((2, 2)),  # ||w|| = 0 -> trust 1 at step 1
        "late_zero_grad": rng.normal(size=(2, 3)),  # gradient 0 at step 2
    }
    grads = [
        {k: rng.normal(size=v.shape) for k, v in start.items()},
        {k: rng.normal(size=v.shape) for k, v in start.items()},
    ]
    grads[1]["late_zero_grad"] = np.zeros((2, 3))
    # (decay, adaptation) per variable, as the default rule decides.
    flags = {
        "kernel": (True, True),
        "bias": (False, False),
        "zero_kernel": (True, True),
        "late_zero_grad": (True, True),
    }
    lrs = [0.5, 0.25]  # a schedule-like change between steps

    lr_var = keras.Variable(lrs[0], trainable=False, name="lr")
    variables = {k: _var(v, k) for k, v in start.items()}
    opt = LARS(
        lambda: lr_var, momentum=HP["momentum"], weight_decay=HP["wd"], eta=HP["eta"], nesterov=nesterov
    )
    ws = {k: v.copy() for k, v in start.items()}
    vs = {k: np.zeros_like(v) for k, v in start.items()}
    for step in range(2):
        lr_var.assign(lrs[step])
        opt.apply(
            [tf.constant(grads[step][k], tf.float32) for k in start], [variables[k] for k in start]
        )
        for k in start:
            decay, adapt = flags[k]
            ws[k], vs[k], trust = np_lars_step(
                ws[k], grads[step][k], vs[k], lrs[step], nesterov=nesterov, decay=decay, adapt=adapt, **HP
            )
            if k == "zero_kernel" and step == 0:
                assert trust == 1.0
        for k in start:
            np.testing.assert_allclose(
                variables[k].numpy(), ws[k], rtol=RTOL, atol=ATOL, err_msg=f"{k} step {step}"
            )
            np.testing.assert_allclose(
                opt.momentums[_keras_compat.optimizer_variable_index(opt, variables[k])].numpy(), vs[k], rtol=RTOL, atol=ATOL
            )
    # The bias moved exactly by momentum SGD without decay: v2 = m*lr1*g1 + lr2*g2.
    v_bias = HP["momentum"] * lrs[0] * grads[0]["bias"] + lrs[1] * grads[1]["bias"]
    np.testing.assert_allclose(vs["bias"], v_bias, rtol=1e-12)


def test_lars_zero_gradient_and_zero_weight_give_trust_one_without_nan():
    # ||w|| = 0 and ||g|| = 0: nothing moves, nothing is NaN.
    zero_both = _var(np.zeros((2, 2)), "kernel")
    opt = LARS(0.1, momentum=0.9, weight_decay=0.1)
    opt.apply([tf.zeros((2, 2))], [zero_both])
    np.testing.assert_array_equal(zero_both.numpy(), np.zeros((2, 2)))

    # A real gradient, then an exactly zero one (no decay): trust falls back
    # to 1 at step 2 and the momentum alone moves the variable: w2 = w1 - m * v1.
    w0 = np.array([[1.0, 2.0], [-1.0, 0.5]])
    g0 = np.array([[0.5, -0.5], [0.1, 0.2]])
    kernel = _var(w0, "kernel")
    opt = LARS(0.4, momentum=0.9, weight_decay=0.0, eta=0.05)
    ws, vs = w0, np.zeros_like(w0)
    for g in (g0, np.zeros_like(g0)):
        opt.apply([tf.constant(g, tf.float32)], [kernel])
        ws_prev, vs_prev = ws, vs
        ws, vs, trust = np_lars_step(ws, g, vs, 0.4, 0.9, 0.0, 0.05, False, decay=False, adapt=True)
    assert trust == 1.0
    np.testing.assert_allclose(ws, ws_prev - 0.9 * vs_prev, rtol=1e-12)
    assert np.all(np.isfinite(kernel.numpy()))
    np.testing.assert_allclose(kernel.numpy(), ws, rtol=RTOL, atol=ATOL)


def test_weight_decay_is_applied_exactly_once():
    # Zero gradient, no adaptation: one step must give w * (1 - lr * wd) = 0.9 w.
    # Decay applied a second time (e.g. Keras' decoupled decay) would give 0.81 w.
    w0 = np.array([[1.0, 2.0], [3.0, 4.0]])
    kernel = _var(w0, "kernel")
    opt = LARS(1.0, momentum=0.5, weight_decay=0.1, exclude_from_layer_adaptation=["kernel"])
    assert opt.weight_decay is None  # the base class' own decay is off
    assert opt.lars_weight_decay == 0.1
    opt.apply([tf.zeros((2, 2))], [kernel])
    np.testing.assert_allclose(kernel.numpy(), 0.9 * w0, rtol=RTOL)


def test_clipnorm_is_forwarded_and_applied_before_lars():
    w0 = np.array([1.0, 1.0])
    g0 = np.array([3.0, 4.0])  # norm 5 -> clipped to norm 1
    v = _var(w0, "bias")
    opt = LARS(0.1, momentum=0.9, weight_decay=0.0, clipnorm=1.0)
    opt.apply([tf.constant(g0, tf.float32)], [v])
    np.testing.assert_allclose(v.numpy(), w0 - 0.1 * g0 / 5.0, rtol=RTOL)
    assert opt.get_config()["clipnorm"] == 1.0


def test_loss_scale_optimizer_wrapping_gives_the_same_step():
    w0 = np.array([[1.0, -2.0], [3.0, 0.5]])
    g0 = np.array([[0.3, 0.1], [-0.2, 0.4]])
    kernel = _var(w0, "kernel")
    opt = keras.optimizers.LossScaleOptimizer(
        LARS(0.7, momentum=0.9, weight_decay=0.01, eta=0.05), initial_scale=8.0
    )
    opt.apply([tf.constant(8.0 * g0, tf.float32)], [kernel])
    w1, _, _ = np_lars_step(w0, g0, np.zeros_like(w0), 0.7, nesterov=False, decay=True, adapt=True, **HP)
    np.testing.assert_allclose(kernel.numpy(), w1, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------
# LARS: exclusion rules


def _layer_variables():
    """Real Keras paths: {path: variable} for dense, BN and oddly named layers."""
    model = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, name="dense"),
            keras.layers.BatchNormalization(name="batch_normalization"),
            keras.layers.Dense(4, name="subnet"),  # contains "bn" as a substring only
            keras.layers.Dense(4, use_bias=False, name="stem_bn2"),  # a "bn2" token
        ],
        name="m",
    )
    return {v.path: v for v in model.trainable_variables}


def test_default_exclusion_rule():
    variables = _layer_variables()
    expected_excluded = {
        "m/dense/kernel": False,
        "m/dense/bias": True,
        "m/batch_normalization/gamma": True,
        "m/batch_normalization/beta": True,
        "m/subnet/kernel": False,
        "m/subnet/bias": True,
        "m/stem_bn2/kernel": True,
    }
    assert set(variables) == set(expected_excluded)
    opt = LARS()
    for path, excluded in expected_excluded.items():
        assert opt.applies_weight_decay(variables[path]) is not excluded, path
        assert opt.applies_layer_adaptation(variables[path]) is not excluded, path
    # The rank rule alone: a rank-1 variable with an innocent name is excluded.
    assert not opt.applies_layer_adaptation(_var(np.ones(3), "scale"))
    # No decay at all when the coefficient is 0.
    assert not LARS(weight_decay=0.0).applies_weight_decay(variables["m/dense/kernel"])


def test_custom_exclusion_patterns_replace_the_default():
    variables = _layer_variables()
    opt = LARS(exclude_from_weight_decay=["subnet"], exclude_from_layer_adaptation=[])
    assert opt.applies_weight_decay(variables["m/dense/bias"])  # default no longer applies
    assert not opt.applies_weight_decay(variables["m/subnet/kernel"])
    assert all(opt.applies_layer_adaptation(v) for v in variables.values())

    # Numerics: with [] a bias gets decay and adaptation like any variable.
    w0, g0 = np.array([1.0, -2.0, 0.5]), np.array([0.2, 0.1, -0.3])
    bias = _var(w0, "bias")
    opt = LARS(
        0.3,
        momentum=0.9,
        weight_decay=0.01,
        eta=0.05,
        exclude_from_weight_decay=[],
        exclude_from_layer_adaptation=[],
    )
    opt.apply([tf.constant(g0, tf.float32)], [bias])
    w1, _, _ = np_lars_step(w0, g0, np.zeros(3), 0.3, nesterov=False, decay=True, adapt=True, **HP)
    np.testing.assert_allclose(bias.numpy(), w1, rtol=RTOL, atol=ATOL)


def test_base_class_exclude_method_raises():
    with pytest.raises(NotImplementedError, match="exclude_from_weight_decay"):
        LARS().exclude_from_weight_decay(var_names=["bias"])


# ---------------------------------------------------------------------------
# LARS: Keras integration


def _tiny_model():
    inputs = keras.Input((3,))
    x = keras.layers.Dense(4, name="dense")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(1, name="out")(keras.layers.ReLU()(x))
    return keras.Model(inputs, outputs, name="tiny")


def _tiny_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def test_fit_two_steps_with_schedule_then_save_and_load():
    model = _tiny_model()
    schedule = WarmupCosineDecay(0.5, total_steps=2, warmup_steps=1, warmup_start=0.5)
    model.compile(optimizer=LARS(schedule, weight_decay=1e-4, eta=0.01), loss="mse", jit_compile=False)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(*_tiny_data(), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations.numpy()) == 2
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, LARS)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    for a, b in zip(loaded.optimizer.momentums, model.optimizer.momentums):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_xla_compiled_steps_match_eager():
    """The update compiles under XLA (Keras' default on GPUs) and gives the eager result."""
    grads = [(np.ones((2, 2)), np.ones(2)), (np.zeros((2, 2)), np.array([0.5, -1.0]))]

    def two_steps(jit_compile):
        w = _var([[1.0, -2.0], [3.0, 0.5]], "kernel")
        b = _var([0.1, 0.2], "bias")
        schedule = WarmupCosineDecay(0.7, total_steps=10, warmup_steps=2)
        opt = LARS(schedule, weight_decay=0.01, eta=0.05, nesterov=True)
        opt.build([w, b])

        def apply(gw, gb):
            opt.apply([gw, gb], [w, b])

        if jit_compile:
            apply = tf.function(apply, jit_compile=True)
        for gw, gb in grads:
            apply(tf.constant(gw, tf.float32), tf.constant(gb, tf.float32))
        return w.numpy(), b.numpy()

    for xla, eager in zip(two_steps(True), two_steps(False)):
        np.testing.assert_allclose(xla, eager, rtol=RTOL, atol=ATOL)


def test_fit_under_two_replica_mirrored_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = _tiny_model()
        model.compile(optimizer=LARS(0.1, nesterov=True), loss="mse", jit_compile=False)
    history = model.fit(*_tiny_data(), batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert int(model.optimizer.iterations.numpy()) == 2


# ---------------------------------------------------------------------------
# LARS: configuration


def test_lars_config_round_trip_and_serialize():
    schedule = WarmupCosineDecay(4.8, total_steps=1000, warmup_steps=100)
    opt = LARS(
        schedule,
        momentum=0.8,
        weight_decay=1e-5,
        eta=0.002,
        nesterov=True,
        exclude_from_layer_adaptation=["bias"],
        exclude_from_weight_decay=["bn", "bias"],
        name="my_lars",
        global_clipnorm=2.0,
    )
    config = opt.get_config()
    assert config["weight_decay"] == 1e-5
    assert config["exclude_from_weight_decay"] == ["bn", "bias"]
    assert LARS.from_config(copy.deepcopy(config)).get_config() == config

    restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(restored, LARS)
    assert isinstance(restored._learning_rate, WarmupCosineDecay)
    assert restored.get_config() == config
    assert restored.weight_decay is None and restored.lars_weight_decay == 1e-5

    plain = LARS(0.2)
    restored_plain = keras.optimizers.deserialize(keras.optimizers.serialize(plain))
    assert restored_plain.get_config() == plain.get_config()


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate=True), "learning_rate"),
        (dict(momentum=1.5), "momentum"),
        (dict(momentum=1.0), "momentum"),
        (dict(momentum=-0.1), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(eta=0.0), "eta"),
        (dict(nesterov="yes"), "nesterov"),
        (dict(exclude_from_weight_decay="bias"), "exclude_from_weight_decay"),
        (dict(exclude_from_layer_adaptation=["bias", ""]), "exclude_from_layer_adaptation"),
        (dict(name=""), "name"),
    ],
)
def test_lars_bad_arguments(kwargs, argument):
    received = re.escape(f"received: {argument}={kwargs[argument]!r}")
    with pytest.raises(ValueError, match=f"`{argument}`.*{received}"):
        LARS(**kwargs)
