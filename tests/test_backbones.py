"""Any Keras backbone as the encoder (docs/backbones.md): keras.applications models, user build functions,
--encoder_weights, the ViT size flags, and every documented bad input through the binary.

The binary runs go through the binary's entry in this process (`helpers.run_binary_in_process`: its flags, its
one error line and exit status), once per setting, in two module fixtures: the refusals (`refused`) and the
backbones trained one step and exported (`runs`, whose tests are slow); a subprocess would only add a TensorFlow
import each (the console-script path is tested in tests/test_binaries.py).
"""

import os
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from supcon_tf import config as config_lib
from supcon_tf import encoders, layers, models, runner
from supcon_tf.encoders import vit
from supcon_tf.config import RunConfig
from helpers import run_binary_in_process

# A module fixture serves several tests: pytest-xdist keeps them on one worker (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("backbones")

ONE_STEP = [
    "--preset=digits_supcon", "--epochs=1", "--steps_per_epoch=1", "--batch_size=8", "--verbose=2", "--image_size=32",
]
MODULE = "supcon_test_backbone"  # the user module written by the `user_dir` fixture
APP = encoders.APPLICATIONS_PREFIX

USER_MODULE = '''
import keras


def build(image_shape):
    """The documented contract: [batch, H, W, C] floats in [0, 1] -> [batch, dim]."""
    inputs = keras.Input(image_shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="my_backbone")


def build_any_size(image_shape):
    inputs = keras.Input((None, None, image_shape[-1]))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    return keras.Model(inputs, keras.layers.GlobalMaxPooling2D()(x), name="any_size")


class Pooled(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3)
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, images):
        return self.pool(self.conv(images))


def build_subclassed(image_shape):
    return Pooled(name="pooled")


def build_dict(image_shape):
    return {"not": "a model"}


def build_feature_maps(image_shape):
    inputs = keras.Input(image_shape)
    return keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))


def build_rgb_only(image_shape):
    inputs = keras.Input(image_shape[:2] + (3,))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))


def build_raises(image_shape):
    raise RuntimeError("this backbone needs a GPU")


NOT_A_FUNCTION = 3
'''


def _run(model_dir, *flags):
    """`(exit status, stdout, stderr)` of `python -m experiments.pretrain` with ONE_STEP and `flags`."""
    result = run_binary_in_process("pretrain", f"--model_dir={model_dir}", *ONE_STEP, *flags)
    return result.returncode, result.stdout, result.stderr


def _error_line(stderr):
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _message(fn, *args, error=ValueError, **kwargs):
    with pytest.raises(error) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("user_code")
    (directory / f"{MODULE}.py").write_text(USER_MODULE)
    (directory / "supcon_test_broken.py").write_text("import a_package_that_is_not_installed_xyz\n")
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))
    for name in (MODULE, "supcon_test_broken"):
        sys.modules.pop(name, None)


# The binary runs: one training step per backbone, and the bad inputs that need the data (run-time errors).
TRAINED = {
    "mobilenet": f"{APP}MobileNet",  # "tf" preprocessing: [-1, 1]
    "vgg16": f"{APP}VGG16",  # "caffe" preprocessing: BGR, ImageNet means subtracted
    "user": f"{MODULE}:build",
}
RUNTIME_ERRORS = {  # found when the encoder is built: the user module is imported only then
    "missing_module": ("supcon_no_such_module_xyz:build", "no module named 'supcon_no_such_module_xyz'"),
    "missing_function": (f"{MODULE}:no_such_function", "has no attribute 'no_such_function'"),
    "returns_dict": (f"{MODULE}:build_dict", "must return a keras.Model"),
    "too_small": (f"{APP}MobileNet", "at least 32x32"),
}
CONFIG_ERRORS = {  # found by RunConfig, before anything is imported or read
    "unknown_name": (["--encoder=resnet"], "`encoder` must be one of"),
    "no_function": (["--encoder=keras.applications:"], "`encoder` must be one of"),
    "missing_weights": (["--encoder_weights=/nonexistent/encoder.weights.h5"], "`encoder_weights` does not exist"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, user_dir):
    """The binary trained one step on each backbone of TRAINED (slow: the MobileNet run alone takes ~20 s)."""
    root = tmp_path_factory.mktemp("backbone_runs")
    flags = {key: [f"--encoder={encoder}"] for key, encoder in TRAINED.items()}
    return root, {key: _run(root / key, *extra) for key, extra in flags.items()}  # user_dir is on sys.path


@pytest.fixture(scope="module")
def refused(tmp_path_factory, user_dir):
    """The binary on each bad encoder setting: refused before it trains."""
    root = tmp_path_factory.mktemp("backbone_refusals")
    flags = {key: [f"--encoder={encoder}"] for key, (encoder, _) in RUNTIME_ERRORS.items()}
    flags["too_small"].append("--image_size=16")
    flags.update({key: extra for key, (extra, _) in CONFIG_ERRORS.items()})
    return root, {key: _run(root / key, *extra) for key, extra in flags.items()}


# ---------------------------------------------------------------------------
# Encoder strings: the config checks the syntax, the library agrees.

VALID = [
    "small_cnn", "vit_b16", f"{APP}EfficientNetV2B0", f"{APP}NoSuchModelYet", "my_module:build",
    "pkg.sub_module:make_encoder", "path/to/file.py:build", "/abs/dir/my-file.py:build_fn",
]
INVALID = ["", "resnet", "ResNet18", "keras.applications:", "module:", ":build", "a:b:c", "my module:build",
           "pkg..sub:build", "pkg.:build", ".py:build", "file.py:1build", "mod:build-fn"]


@pytest.mark.parametrize("encoder", VALID)
def test_valid_encoder_strings_pass_the_config_without_importing(encoder):
    assert RunConfig.from_flat(encoder=encoder).model.encoder == encoder  # nothing is imported: these modules do not exist
    kind = encoders.parse_encoder(encoder)[0]
    assert kind == ("registered" if ":" not in encoder else "application" if encoder.startswith(APP) else
                    "file" if ".py:" in encoder else "module")


@pytest.mark.parametrize("encoder", INVALID)
def test_bad_encoder_strings_are_one_line_errors(encoder):
    message = _message(RunConfig.from_flat, encoder=encoder)
    assert "`encoder`" in message and f"encoder={encoder!r}" in message and "keras.applications:<Name>" in message
    message = _message(encoders.parse_encoder, encoder)
    assert f"name={encoder!r}" in message


# ---------------------------------------------------------------------------
# keras.applications backbones.


@pytest.mark.parametrize("family", sorted(encoders.APPLICATION_INPUT_MODES))
@pytest.mark.parametrize("channels", [1, 3])
def test_preprocessing_is_the_applications_own_on_0_255_rgb(family, channels):
    images = np.random.uniform(size=(2, 5, 5, channels)).astype("float32")
    rgb = np.repeat(images, 3, axis=-1) if channels == 1 else images
    expected = getattr(keras.applications, family).preprocess_input(rgb * 255.0)
    inputs = keras.Input((5, 5, channels))
    preprocessing = keras.Model(inputs, encoders.application_preprocessing(family, inputs))
    assert preprocessing.output_shape == (None, 5, 5, 3) and not preprocessing.weights
    np.testing.assert_allclose(_np(preprocessing(images)), _np(expected), rtol=1e-5, atol=1e-4)


def test_every_application_has_a_known_family():
    names = [n for n in dir(keras.applications) if n[0].isupper()]
    assert len(names) >= 40
    assert {encoders.application_family(n) for n in names} == set(encoders.APPLICATION_INPUT_MODES)
    assert "`family`" in _message(encoders.application_preprocessing, "imagenet_utils", keras.Input((4, 4, 3)))


def test_application_encoder_is_a_functional_model_from_images_to_vectors():
    encoder = encoders.build_encoder(f"{APP}MobileNetV3Small", (32, 32, 1), minimalistic=True)
    assert encoder.name == "mobilenetv3small" and len(encoder.inputs) == 1
    assert tuple(encoder.inputs[0].shape) == (None, 32, 32, 1)
    assert encoder.output_shape == (None, 576)
    assert [type(layer).__name__ for layer in encoder.layers[1:]] == ["Concatenate", "Rescaling", "Functional"]
    backbone = encoder.layers[-1]
    assert tuple(backbone.inputs[0].shape) == (None, 32, 32, 3)  # grayscale is repeated to RGB
    assert any(isinstance(layer, keras.layers.Rescaling) for layer in backbone.layers)  # its own [0, 255] scaling
    model = models.SupConModel(encoder, layers.ProjectionHead((16,), 8))
    assert model.built
    outputs = model(np.random.uniform(size=(2, 32, 32, 1)).astype("float32"))
    assert tuple(outputs[models.REPRESENTATION].shape) == (2, 576) and tuple(outputs[models.EMBEDDING].shape) == (2, 8)


def test_application_synchronized_bn_and_options():
    encoder = encoders.build_encoder(f"{APP}MobileNetV3Small", (32, 32, 3), synchronized_bn=True, alpha=0.75)
    norms = [layer for layer in encoder.layers[-1].layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.synchronized for layer in norms)
    message = _message(encoders.build_encoder, f"{APP}MobileNetV3Small", (32, 32, 3), weights="imagenet")
    assert "weights='imagenet'" in message and "minimalistic" in message


@pytest.mark.parametrize(
    "name, shape, minimum",
    [("MobileNet", (16, 16, 1), "32x32"), ("ResNet50", (32, 16, 3), "32x32"), ("InceptionV3", (32, 32, 3), "75x75"),
     ("Xception", (64, 64, 3), "71x71")],
)
def test_too_small_images_name_the_encoder_and_the_minimum(name, shape, minimum):
    message = _message(encoders.build_encoder, f"{APP}{name}", shape)
    assert f"encoder '{APP}{name}'" in message and f"at least {minimum}" in message and str(shape) in message


def test_unknown_application_lists_the_available_ones():
    for name in ("NoSuchNet", "resnet"):  # `resnet` is a sub-module, not a model
        message = _message(encoders.build_encoder, f"{APP}{name}", (32, 32, 3))
        assert f"no model {name!r}" in message and "EfficientNetV2B0" in message


# ---------------------------------------------------------------------------
# User build functions.


@pytest.mark.parametrize("form", ["module", "file"])
def test_user_build_function_is_imported_and_called_with_the_image_shape(user_dir, form):
    spec = f"{MODULE}:build" if form == "module" else f"{user_dir / MODULE}.py:build"
    encoder = encoders.build_encoder(spec, (12, 12, 1))
    assert encoder.name == "my_backbone" and encoder.output_shape == (None, 8)
    assert tuple(encoder.inputs[0].shape) == (None, 12, 12, 1)
    assert sys.modules[MODULE].__file__ == str(user_dir / f"{MODULE}.py")


@pytest.mark.parametrize("function, dim", [("build_any_size", 4), ("build_subclassed", 4)])
def test_other_models_are_wrapped_into_a_functional_model_of_the_image_shape(user_dir, function, dim):
    encoder = encoders.build_encoder(f"{MODULE}:{function}", (10, 10, 3))
    assert tuple(encoder.inputs[0].shape) == (None, 10, 10, 3) and encoder.output_shape == (None, dim)
    assert tuple(encoder(np.zeros((2, 10, 10, 3), "float32")).shape) == (2, dim)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("supcon_no_such_module_xyz:build", "no module named 'supcon_no_such_module_xyz' on the Python path"),
        ("supcon_no_such_module_xyz.sub:build", "no module named 'supcon_no_such_module_xyz'"),
        ("supcon_test_broken:build", "raised ModuleNotFoundError: No module named 'a_package_that_is_not_installed_xyz'"),
        (f"{MODULE}:no_such_function", f"module '{MODULE}' has no attribute 'no_such_function'"),
        (f"{MODULE}:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is not callable"),
        (f"{MODULE}:build_dict", "build_dict((32, 32, 1)) must return a keras.Model"),
        (f"{MODULE}:build_feature_maps", "outputs [batch, dim]"),
        (f"{MODULE}:build_rgb_only", "takes inputs of shape (32, 32, 3), not the images' (32, 32, 1)"),
        (f"{MODULE}:build_raises", "raised RuntimeError: this backbone needs a GPU"),
        ("{user_dir}/missing.py:build", "does not exist"),
    ],
)
def test_user_function_errors_name_the_encoder(user_dir, spec, expected):
    spec = spec.format(user_dir=user_dir)
    message = _message(encoders.build_encoder, spec, (32, 32, 1))
    assert message.startswith(f"encoder {spec!r}") and expected in message


def test_user_function_takes_no_options(user_dir):
    assert "synchronized=True" in _message(encoders.build_encoder, f"{MODULE}:build", (8, 8, 1), synchronized_bn=True)
    assert "width=2" in _message(encoders.build_encoder, f"{MODULE}:build", (8, 8, 1), width=2)


# ---------------------------------------------------------------------------
# --encoder_weights.


def test_weights_file_initialises_another_encoder_identically(tmp_path):
    spec = f"{APP}MobileNetV3Small"
    source = encoders.build_encoder(spec, (32, 32, 1), minimalistic=True)
    images = np.random.uniform(size=(3, 32, 32, 1)).astype("float32")
    source(images, training=True)  # moves the BN statistics away from their initial values
    source.save_weights(tmp_path / "encoder.weights.h5")
    keras.utils.set_random_seed(99)
    target = encoders.build_encoder(spec, (32, 32, 1), minimalistic=True)
    assert not np.allclose(_np(target(images)), _np(source(images)))
    config = RunConfig.from_flat(encoder=spec, encoder_weights=str(tmp_path / "encoder.weights.h5"))
    assert encoders.load_encoder_weights(target, config.model.encoder_weights) is target
    for a, b in zip(source.weights, target.weights):
        np.testing.assert_array_equal(_np(a), _np(b))
    np.testing.assert_array_equal(_np(target(images)), _np(source(images)))
    # The backbone always sees RGB: grayscale weights fit an RGB encoder of the same size.
    rgb = encoders.build_encoder(spec, (32, 32, 3), minimalistic=True)
    encoders.load_encoder_weights(rgb, tmp_path / "encoder.weights.h5")
    np.testing.assert_allclose(_np(rgb(np.repeat(images, 3, axis=-1))), _np(source(images)), atol=1e-6)


def test_runner_builds_the_configured_encoder_with_its_weights(tmp_path):
    source = encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25)
    source.save_weights(tmp_path / "small.weights.h5")
    config = RunConfig.from_flat(encoder="small_cnn", encoder_width=0.25, encoder_weights=str(tmp_path / "small.weights.h5"))
    encoder = runner.build_encoder(config, (8, 8, 1))
    images = np.random.uniform(size=(2, 8, 8, 1)).astype("float32")
    np.testing.assert_array_equal(_np(encoder(images)), _np(source(images)))
    wider = config.replace(encoder_width=0.5)
    message = _message(runner.build_encoder, wider, (8, 8, 1))
    assert message.startswith("`encoder_weights`:") and "does not fit" in message and "(3, 3, 1, 16)" in message
    # A whole model's weights (encoder + head) are not an encoder's.
    model = models.SupConModel(source, layers.ProjectionHead((4,), 4))
    model.save_weights(tmp_path / "model.weights.h5")
    message = _message(runner.build_encoder, config.replace(encoder_weights=str(tmp_path / "model.weights.h5")), (8, 8, 1))
    assert "the file holds" in message and "variables" in message


def test_bad_weights_paths(tmp_path):
    encoder = encoders.build_encoder("small_cnn", (8, 8, 1), width=0.25)
    assert "does not exist" in _message(
        encoders.load_encoder_weights, encoder, tmp_path / "none.weights.h5", error=FileNotFoundError
    )
    (tmp_path / "weights.npz").write_bytes(b"x")
    assert ".weights.h5" in _message(encoders.load_encoder_weights, encoder, tmp_path / "weights.npz")
    (tmp_path / "junk.weights.h5").write_bytes(b"not hdf5")
    assert "not a readable" in _message(encoders.load_encoder_weights, encoder, tmp_path / "junk.weights.h5")
    message = _message(RunConfig.from_flat, encoder_weights=str(tmp_path / "none.weights.h5"))
    assert message.startswith("`encoder_weights` does not exist")
    assert "`encoder_weights` must be" in _message(RunConfig.from_flat, encoder_weights=str(tmp_path / "weights.npz"))
    (tmp_path / "ok.keras").write_bytes(b"x")
    message = _message(RunConfig.from_flat, method="linear", pretrained="x.keras", encoder_weights=str(tmp_path / "ok.keras"))
    assert "method='linear'" in message


# ---------------------------------------------------------------------------
# ViT sizes from the config.


def test_vit_sizes_come_from_the_config():
    config = RunConfig.from_flat(encoder="vit_tiny_patch4_32", vit_hidden_dim=32, vit_depth=1, vit_num_heads=2, vit_mlp_dim=64)
    encoder = runner.build_encoder(config, (8, 8, 1))
    assert encoder.output_shape == (None, 32)
    assert len([layer for layer in encoder.layers if isinstance(layer, vit.TransformerBlock)]) == 1
    assert "`vit_depth`" in _message(RunConfig.from_flat, encoder="vit_tiny_patch4_32", vit_depth=0)
    message = _message(RunConfig.from_flat, encoder="vit_b16", vit_depth=2)
    assert "`vit_depth`" in message and "vit_tiny_patch4_32" in message and "encoder='vit_b16'" in message
    message = _message(runner.build_encoder, config.replace(vit_num_heads=5), (8, 8, 1))
    assert "hidden_dim=32" in message and "num_heads=5" in message


# ---------------------------------------------------------------------------
# Through the binary.


@pytest.mark.slow  # the binary trains and exports each backbone (BUILD_NOTES.md: which tests are slow)
@pytest.mark.parametrize("key", sorted(TRAINED))
def test_binary_trains_one_step_and_exports(runs, key):
    root, results = runs
    code, stdout, stderr = results[key]
    assert code == 0, stderr[-3000:]
    assert "1/1 - " in stdout and "pre-training done" in stdout
    assert os.path.exists(root / key / "FINISHED")
    loaded = tf.saved_model.load(str(root / key / "saved_model"))
    images = tf.random.uniform((2, 32, 32, 1))
    outputs = loaded.signatures["serving_default"](images=images)
    representation = outputs["representation"]
    assert representation.shape[0] == 2 and np.all(np.isfinite(representation.numpy()))


@pytest.mark.slow  # the binary trains and exports each backbone (BUILD_NOTES.md: which tests are slow)
def test_run_model_keras_initialises_a_fresh_encoder_like_the_export(runs):
    root, results = runs
    assert results["vgg16"][0] == 0
    encoder = encoders.build_encoder(TRAINED["vgg16"], (32, 32, 1))
    encoders.load_encoder_weights(encoder, root / "vgg16" / "model.keras")
    images = np.random.uniform(size=(2, 32, 32, 1)).astype("float32")
    exported = tf.saved_model.load(str(root / "vgg16" / "saved_model")).signatures["serving_default"]
    np.testing.assert_allclose(
        _np(encoder(images, training=False)), exported(images=tf.constant(images))["representation"].numpy(),
        rtol=1e-4, atol=1e-4,
    )
    message = _message(encoders.load_encoder_weights, encoders.build_encoder("small_cnn", (32, 32, 1)),
                       root / "vgg16" / "model.keras")
    assert "does not fit" in message


@pytest.mark.parametrize("key", sorted(CONFIG_ERRORS))
def test_config_errors_exit_2_with_one_line_and_write_nothing(refused, key):
    root, results = refused
    code, _, stderr = results[key]
    assert code == 2 and CONFIG_ERRORS[key][1] in _error_line(stderr)
    assert not os.path.exists(root / key)


@pytest.mark.parametrize("key", sorted(RUNTIME_ERRORS))
def test_build_errors_exit_2_with_one_line_naming_the_encoder(refused, key):
    root, results = refused
    code, _, stderr = results[key]
    encoder, expected = RUNTIME_ERRORS[key]
    line = _error_line(stderr)
    assert code == 2 and f"encoder {encoder!r}" in line and expected in line, line
    assert not os.path.exists(root / key) or not os.listdir(root / key)  # nothing written

