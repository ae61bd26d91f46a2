"""Up-front refusals of the training binaries: one line naming the flag or folder, exit status 2, nothing written.

Each runs the binary's entry in this process (`helpers.run_binary_in_process`: the same flags, the same
`absl_main` line and status as `python -m experiments.<binary>`), with the flags of tests/test_run_lifecycle.py.
The console-script path of each binary (a subprocess, exit status 2, nothing written) is checked there, by
`test_single_class_folder`.
"""

from helpers import assert_refused, image_folder, run_binary_in_process
from test_run_lifecycle import TINY


def _run(model_dir, *flags, module="pretrain"):
    return run_binary_in_process(module, f"--model_dir={model_dir}", *TINY, *flags)


def test_batch_larger_than_the_training_split(tmp_path):
    model_dir = tmp_path / "run"
    result = _run(model_dir, "--batch_size=2000")
    assert_refused(
        result, model_dir,
        "error: `batch_size` (2000, global over 1 replica(s)) is larger than the training split (1437 examples), "
        "which gives zero steps per epoch: use --batch_size <= 1437",
    )


def test_batch_not_divisible_over_replicas(tmp_path):
    model_dir = tmp_path / "run"
    result = _run(model_dir, "--batch_size=33", "--strategy=mirrored", "--cpu_devices=2")
    assert_refused(result, model_dir, "`batch_size` must be divisible by the number of replicas (2), received: "
                                      "batch_size=33")


def test_xla_under_two_replicas_is_refused(tmp_path):
    model_dir = tmp_path / "run"
    result = _run(model_dir, "--strategy=mirrored", "--cpu_devices=2", "--jit_compile")
    assert_refused(result, model_dir, "`jit_compile` cannot be combined with strategy='mirrored' over 2 replicas")


def test_empty_class_folder(tmp_path):
    data_dir = image_folder(tmp_path / "images", {"a": 3, "b": 3, "empty": 0})
    model_dir = tmp_path / "run"
    result = _run(model_dir, "--preset=digits_ce", "--dataset=folder", f"--data_dir={data_dir}", "--batch_size=4",
                  "--image_size=8", module="train_ce")
    assert_refused(result, model_dir, f"class folder '{data_dir}/train/empty' has no image files")
