"""RunConfig validation, presets, and the flag -> config resolution."""

import dataclasses

import pytest

from experiments import presets
from supcon_tf.config import RunConfig


def test_defaults_are_valid_and_round_trip_through_json_dict():
    config = RunConfig()
    assert RunConfig.from_dict(config.to_dict()) == config
    assert '"method": "supcon"' in config.to_json()


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_builds_a_valid_config(name):
    values = presets.get_preset(name)
    if values["method"] == "linear":
        values["pretrained"] = "runs/x/model.keras"
    config = RunConfig.from_dict(values)
    assert config.method == values["method"]
    assert name in presets.PAPER_TARGETS


def test_paper_recipes_hold_the_papers_numbers():
    c10 = presets.get_preset("cifar10_supcon")
    assert (c10["batch_size"], c10["learning_rate"], c10["temperature"], c10["epochs"]) == (1024, 0.5, 0.1, 1000)
    assert (c10["momentum"], c10["weight_decay"], c10["warmup_epochs"], c10["augmentation"]) == (0.9, 1e-4, 10, "simclr")
    assert c10["encoder"] == "resnet50" and (c10["head_hidden"], c10["embedding_dim"]) == (2048, 128)
    assert presets.get_preset("cifar100_simclr")["temperature"] == 0.5
    r50 = presets.get_preset("imagenet_supcon_resnet50")
    assert (r50["optimizer"], r50["augmentation"], r50["batch_size"], r50["epochs"]) == ("lars", "autoaugment", 6144, 350)
    r200 = presets.get_preset("imagenet_supcon_resnet200")
    assert (r200["augmentation"], r200["epochs"]) == ("stacked_randaugment", 700)


def test_unknown_preset_lists_valid_names():
    with pytest.raises(ValueError, match="preset.*cifar10_supcon"):
        presets.get_preset("cifar11")


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(method="byol"), "method"),
        (dict(dataset="mnist"), "dataset"),
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-0.5), "temperature"),
        (dict(batch_size=0), "batch_size"),
        (dict(epochs=0), "epochs"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(warmup_epochs=5, epochs=2), "warmup_epochs"),
        (dict(num_views=1), "num_views"),
        (dict(method="linear"), "pretrained"),
        (dict(dataset="folder"), "data_dir"),
        (dict(strategy="tpu"), "tpu"),
        (dict(strategy="horovod"), "strategy"),
        (dict(augmentation="mixup"), "augmentation"),
        (dict(crop_scale_min=0.0), "crop_scale_min"),
        (dict(num_classes=1), "num_classes"),
        (dict(model_dir=""), "model_dir"),
        (dict(verbose=3), "verbose"),
        (dict(image_size=True), "image_size"),
        (dict(data_service_timeout=0), "data_service_timeout"),
        (dict(data_service_timeout=-1.0), "data_service_timeout"),
        (dict(data_service_timeout=float("nan")), "data_service_timeout"),
        (dict(data_service_timeout=float("inf")), "data_service_timeout"),
        (dict(data_service_timeout=True), "data_service_timeout"),
        (dict(data_service_timeout="60"), "data_service_timeout"),
        (dict(data_service_timeout=None), "data_service_timeout"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        RunConfig.from_flat(**changes)


def test_config_is_frozen_and_rejects_unknown_fields():
    config = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.optim.epochs = 3
    with pytest.raises(ValueError, match="learning_rte"):
        RunConfig.from_dict({"learning_rte": 0.1})
    assert config.replace(epochs=3).optim.epochs == 3


@pytest.mark.parametrize("scaling, expected", [("linear", 0.125), ("sqrt", 0.25), ("none", 0.5)])
def test_learning_rate_follows_the_batch_by_the_chosen_rule(scaling, expected):
    config = RunConfig.from_flat(learning_rate=0.5, batch_size=256, reference_batch_size=1024, learning_rate_scaling=scaling)
    assert config.resolved_learning_rate == pytest.approx(expected)
    assert config.to_dict()["resolved_learning_rate"] == pytest.approx(expected)  # lands in config.json
    assert RunConfig.from_dict(config.to_dict()) == config  # the derived value is not a settable field
    # Without a reference batch the learning rate is the one given.
    assert RunConfig.from_flat(learning_rate=0.5, batch_size=256).resolved_learning_rate == 0.5
    with pytest.raises(ValueError, match="learning_rate_scaling"):
        RunConfig.from_flat(learning_rate_scaling="cubic")
    with pytest.raises(ValueError, match="reference_batch_size"):
        RunConfig.from_flat(reference_batch_size=0)


def test_overriding_a_presets_batch_rescales_its_learning_rate():
    from absl import flags

    from experiments import common, flagging

    flag_values = flags.FLAGS
    flag_values(["prog", "--preset=cifar10_supcon", "--batch_size=256"])
    try:
        config = common.config_from_flags()
    finally:
        flag_values.unparse_flags()
    assert (config.optim.reference_batch_size, config.optim.batch_size) == (1024, 256)
    assert config.resolved_learning_rate == pytest.approx(0.5 * 256 / 1024)


def test_data_service_timeout_defaults_to_a_minute_and_is_a_float_flag():
    assert RunConfig().runtime.data_service_timeout == 60.0
    config = RunConfig.from_flat(data_service="grpc://localhost:5050", data_service_timeout=2.5)
    assert config.runtime.data_service_timeout == 2.5 and RunConfig.from_dict(config.to_dict()) == config
    assert RunConfig.from_flat(data_service_timeout=1).runtime.data_service_timeout == 1
    with pytest.raises(ValueError) as error:
        RunConfig.from_flat(data_service="grpc://localhost:5050", data_service_timeout=0)
    assert str(error.value) == "`data_service_timeout` must be a positive number, received: data_service_timeout=0"
    from experiments import common, flagging

    assert "data_service_timeout" in common.FLAGS and "Seconds" in flagging.help_texts(RunConfig)["data_service_timeout"]
