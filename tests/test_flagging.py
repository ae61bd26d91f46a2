"""The one flag mechanism (experiments/flagging.py): flags generated from config fields, read back, one error line."""

import dataclasses
import glob
import os

import pytest
from absl import flags

from experiments import flagging
from experiments.flagging import option
from supcon_tf.config import RunConfig
from helpers import ROOT


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str = option("a", "A name.")
    count: int = option(3, "A count.")
    rate: float | None = option(None, "A rate.")
    on: bool = option(True, "A switch.")
    sizes: tuple[int, ...] = option((1, 2), "Sizes.", flag="size_grid")
    words: tuple = option((), "Words.")
    hidden: int = 7  # no help text: not a flag


def _parsed(*argv, **define_kwargs):
    flag_values = flags.FlagValues()
    flagging.define(_Config, flag_values=flag_values, **define_kwargs)
    flag_values(["prog", *argv])
    return flag_values


def test_fields_with_a_help_text_become_typed_flags_and_read_back():
    flag_values = _parsed("--count=5", "--rate=0.5", "--noon", "--size_grid=4,8", "--words=x,y")
    assert set(flag_values) == {"name", "count", "rate", "on", "size_grid", "words"}
    assert flag_values["count"].help == "A count."
    assert flagging.values(_Config, flag_values=flag_values) == dict(
        name="a", count=5, rate=0.5, on=False, sizes=(4, 8), words=("x", "y")
    )
    assert flagging.values(_Config, flag_values=_parsed()) == dict(
        name="a", count=3, rate=None, on=True, sizes=(1, 2), words=()
    )


def test_defaults_names_and_unset():
    flag_values = _parsed("--count=2", names=("count", "sizes"), defaults={"sizes": (9,)})
    assert set(flag_values) == {"count", "size_grid"}
    assert flagging.values(_Config, names=("count", "sizes"), flag_values=flag_values) == {"count": 2, "sizes": (9,)}
    flag_values = _parsed("--count=2", unset=True)
    assert flagging.values(_Config, unset=True, flag_values=flag_values) == {"count": 2}
    assert flag_values["count"].help == "A count. (default: 3)"
    with pytest.raises(TypeError, match="hidden"):
        flagging.define(_Config, names=("hidden",), flag_values=flags.FlagValues())


def test_a_bad_list_item_names_the_flag_and_the_value():
    with pytest.raises(ValueError, match=r"`--size_grid` must be a comma-separated list of ints, received: '4,x'"):
        flagging.values(_Config, flag_values=_parsed("--size_grid=4,x"))


def test_every_run_config_field_is_a_flag_with_a_help_text():
    assert set(flagging.help_texts(RunConfig)) == {f.name for f in RunConfig.flat_fields()}
    flag_values = flags.FlagValues()
    flagging.define(RunConfig, unset=True, flag_values=flag_values)
    flag_values(["prog", "--queue_size=8", "--key_momentum=0.9", "--noflip"])
    given = flagging.values(RunConfig, unset=True, flag_values=flag_values)
    assert given == {"queue_size": 8, "key_momentum": 0.9, "flip": False}
    assert RunConfig.from_flat(**given).model.queue_size == 8


def test_no_binary_defines_a_flag_by_hand():
    """Every flag of every binary comes from a config's fields, through experiments/flagging.py."""
    sources = glob.glob(os.path.join(ROOT, "experiments", "**", "*.py"), recursive=True)
    by_hand = [path for path in sources if "DEFINE_" in open(path).read() and not path.endswith("flagging.py")]
    assert not by_hand, by_hand


def test_program_name(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/experiments/report/__main__.py"])
    assert flagging.program_name() == "report"
    monkeypatch.setattr("sys.argv", ["/x/experiments/demo.py"])
    assert flagging.program_name() == "demo"
    monkeypatch.setattr("sys.argv", ["/venv/bin/supcon-pretrain"])
    assert flagging.program_name() == "supcon-pretrain"


def test_absl_main_turns_bad_input_into_one_line_and_status_2(capsys):
    def bad():
        raise ValueError("`x` must be\n positive, received: x=0")

    assert flagging.absl_main(bad)(["prog"]) == 2
    assert flagging.absl_main(lambda: 0)(["prog", "stray"]) == 2
    assert flagging.absl_main(lambda: 0)(["prog"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("error: `x` must be positive, received: x=0") and "unexpected positional" in lines[1]


def test_demo_config_composes_the_run_config_settings():
    from experiments import presets
    from experiments.demo import STAGE_DEFAULTS, DemoConfig

    config = DemoConfig(stage={"epochs": 3})
    assert config.stage == {**STAGE_DEFAULTS, "epochs": 3}
    assert config.to_dict() == {
        "output_dir": "runs/demo", "probe_epochs": 100, "methods": ["supcon", "simclr", "ce"], **config.stage
    }
    supcon = config.run_config("digits_supcon", "runs/x")
    assert (supcon.optim.epochs, supcon.optim.batch_size, supcon.runtime.verbose, supcon.runtime.export) == (3, 128, 2, False)
    assert supcon.data.image_size == STAGE_DEFAULTS["image_size"]
    probe = config.probe_config("runs/x/supcon")
    assert (probe.optim.epochs, probe.runtime.verbose, probe.evaluation.pretrained) == (100, 0, "runs/x/supcon/model.keras")
    assert probe.optim.batch_size == presets.get_preset("digits_linear")["batch_size"]  # the probe keeps its preset's batch
    with pytest.raises(ValueError, match="batch_size"):
        DemoConfig(stage={"batch_size": 0})
    with pytest.raises(ValueError, match="stage"):
        DemoConfig(stage={"temperature": 0.5})


def test_absl_main_forgets_the_run_folder_of_an_earlier_main(tmp_path, capsys):
    """A run folder registered by one main (`set_run_folder`) does not receive the error.log of the next one."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / flagging.RUN_FOLDER_MARKER).write_text("{}")

    def first():
        flagging.set_run_folder(folder)
        return 0

    def second():
        raise RuntimeError("boom")

    assert flagging.absl_main(first)(["prog"]) == 0
    assert flagging.absl_main(second)(["prog"]) == 1
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom (traceback below)" in err and "Traceback" in err
    assert not (folder / "error.log").exists()
