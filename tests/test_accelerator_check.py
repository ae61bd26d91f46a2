"""benchmarks/accelerator_check.py: the --smoke run end to end (every section, both files) and its flag checks.

The smoke run injects one recovered OOM (float32 at batch 8: the worker
clears the session and halves to 4) and one worker crash (mixed_float16 at
batch 8: a fresh worker resumes at 4), so both out-of-memory paths run here
even though a CPU never runs out of device memory. The smoke tests read one
run, made once per test session (the `smoke` fixture).
"""

import json
import math
import os
import subprocess
import sys

import pytest
from helpers import ROOT, run_python, session_folder, subprocess_env

SCRIPT = os.path.join(ROOT, "benchmarks", "accelerator_check.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import accelerator_check  # noqa: E402  (the driver part imports no TensorFlow)


def _run(args, timeout=240):
    return run_python(SCRIPT, *args, env=subprocess_env(TF_ENABLE_ONEDNN_OPTS="1"), timeout=timeout)


def _finite_positive(value):
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _smoke_test(test):
    """The smoke run (about 40 s of CPU: a driver and three worker processes, one crashed on purpose) is slow; its
    tests read one run (the `smoke` fixture). The `xdist_group` mark keeps them on one worker (`make test-slow`:
    --dist loadgroup); the fixture also shares the run between workers itself, for other ways of running them."""
    return pytest.mark.slow(pytest.mark.xdist_group("accelerator_check_smoke")(test))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """`(completed process, out_dir, report dict or None)` of the one smoke run of this session.

    The first process of the session to need it makes it in `helpers.session_folder`; any other (another
    pytest-xdist worker) waits on its lock and reads the same run. A run that did not complete (e.g. a timeout)
    leaves no record, so the next process to need it runs it again.
    """
    with session_folder(tmp_path_factory, "accelerator_check_smoke") as root:
        out_dir, record_path = root / "out", root / "process.json"
        if not record_path.exists():
            args = ["--smoke", "--out_dir", str(out_dir), "--inject_faults", "oom@float32:8,crash@mixed_float16:8"]
            if out_dir.exists():  # left by a run that did not complete
                for name in os.listdir(out_dir):
                    os.remove(out_dir / name)
            else:
                out_dir.mkdir()
            done = _run(args)
            record = {"args": list(done.args), "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
            partial = root / "process.json.partial"
            partial.write_text(json.dumps(record))
            os.replace(partial, record_path)
        record = json.loads(record_path.read_text())
    result = subprocess.CompletedProcess(record["args"], record["returncode"], record["stdout"], record["stderr"])
    report = None
    if os.path.exists(out_dir / accelerator_check.JSON_NAME):
        with open(out_dir / accelerator_check.JSON_NAME) as f:
            report = json.load(f)
    return result, out_dir, report


@_smoke_test
def test_smoke_exits_zero_and_writes_both_files(smoke):
    result, out_dir, report = smoke
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert sorted(os.listdir(out_dir)) == [accelerator_check.JSON_NAME, accelerator_check.MD_NAME]  # no temp files left
    assert report["schema"] == accelerator_check.SCHEMA and report["mode"] == "smoke"
    assert report["command"].startswith("python benchmarks/accelerator_check.py --smoke --out_dir ")


@_smoke_test
def test_smoke_facts(smoke):
    facts = smoke[2]["facts"]
    assert facts["status"] == "ok"
    assert facts["tensorflow"] and facts["keras"] and isinstance(facts["build_info"], dict)
    assert any(d["device_type"] == "CPU" for d in facts["physical_devices"])
    assert facts["num_replicas"] == 1 and facts["strategy"] == "default" and facts["cpu_count"] >= 1
    assert facts["compute_device"] == "CPU:0" and "CPU" in facts["memory_note"]


@_smoke_test
def test_smoke_train_step_in_three_configurations(smoke):
    steps = {row["config"]: row for row in smoke[2]["train_step"]}
    assert list(steps) == ["float32", "mixed_float16", "mixed_float16_xla"]
    for row in steps.values():
        assert row["status"] == "ok", row
        assert _finite_positive(row["samples_per_s"]) and _finite_positive(row["step_ms"])
        assert row["views_per_s"] == pytest.approx(2 * row["samples_per_s"])
        assert math.isfinite(row["final_loss"])
        assert row["peak_memory_bytes"] is None and row["memory_note"]  # CPU: null, with the reason
    assert [row["jit_compile_effective"] for row in steps.values()] == [False, False, True]
    assert [row["loss_scale_optimizer"] for row in steps.values()] == [False, True, True]
    # The injected OOM was recovered in the worker, the injected crash by a fresh worker: both at batch 4.
    assert [(a["batch"], a["status"]) for a in steps["float32"]["attempts"]] == [(8, "OOM"), (4, "ok")]
    assert [(a["batch"], a["status"]) for a in steps["mixed_float16"]["attempts"]] == [(8, "OOM"), (4, "ok")]
    assert [(a["batch"], a["status"]) for a in steps["mixed_float16_xla"]["attempts"]] == [(8, "ok")]
    assert steps["float32"]["batch"] == 4 and steps["mixed_float16_xla"]["batch"] == 8


@_smoke_test
def test_smoke_host_and_device_augmentation_rows(smoke):
    rows = {row["augment_on"]: row for row in smoke[2]["augmentation"]}
    assert list(rows) == ["host", "device"]
    for row in rows.values():
        assert row["status"] == "ok", row
        assert row["batch"] == 8 and row["policy"] == "mixed_float16" and row["jit_compile_effective"] is False
        assert _finite_positive(row["samples_per_s"]) and _finite_positive(row["input_samples_per_s"])
        assert row["views_per_s"] == pytest.approx(2 * row["samples_per_s"]) and math.isfinite(row["final_loss"])
    # What the pipeline hands over: float32 views (8 x 2 x 16x16x3 x 4 bytes) against uint8 20x20x3 sources + seeds.
    assert rows["host"]["input_bytes_per_batch"] == 8 * 2 * 16 * 16 * 3 * 4
    assert rows["device"]["input_bytes_per_batch"] == 8 * 20 * 20 * 3 + 8 * 2 * 2 * 8


@_smoke_test
def test_smoke_loss_dense_and_blockwise(smoke):
    rows = smoke[2]["loss"]
    assert {(r["rows"], r["implementation"]) for r in rows} == {(n, i) for n in (64, 128) for i in ("dense", "blockwise")}
    for row in rows:
        assert row["status"] == "ok", row
        assert _finite_positive(row["time_ms"]) and math.isfinite(row["loss"])
        assert row["peak_memory_bytes"] is None and row["memory_note"]
        if row["implementation"] == "dense":
            assert row["dense_logits_bytes"] == row["rows"] ** 2 * 4
    by_key = {(r["rows"], r["implementation"]): r["loss"] for r in rows}
    for n in (64, 128):  # the two forms are the same loss
        assert by_key[(n, "dense")] == pytest.approx(by_key[(n, "blockwise")], rel=1e-5)


@_smoke_test
def test_smoke_mixed_against_float32(smoke):
    compare = smoke[2]["mixed_vs_float32"]
    assert compare["status"] == "ok", compare
    row, rounded = compare["rows"]  # no TF32 row without a GPU
    assert row["name"] == "mixed_float16" and row["all_finite"]
    assert rounded["name"] == "float32_float16_inputs" and rounded["all_finite"]
    assert math.isfinite(rounded["grad_global_rel_diff"])
    assert math.isfinite(row["loss_abs_diff"]) and row["loss_rel_diff"] < 1e-2
    assert math.isfinite(row["grad_max_rel_diff"]) and row["grad_max_rel_diff"] < 0.5
    assert row["grad_global_rel_diff"] <= row["grad_max_rel_diff"] + 1e-12


@_smoke_test
def test_smoke_markdown(smoke):
    _, out_dir, report = smoke
    text = (out_dir / accelerator_check.MD_NAME).read_text()
    assert f"Command: `{report['command']}`" in text
    assert "| configuration | batch | samples/s | views/s | step (ms) |" in text
    assert "| N (contrast rows) | batch | implementation | status | time (ms) |" in text
    assert "| augment_on | batch | samples/s | views/s | step (ms) | input alone (samples/s) |" in text
    assert "| mixed_float16 vs float32 |" in text


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--max_batch", "0"], "--max_batch"),
        (["--max_batch", "many"], "--max_batch"),
        (["--strategy", "gpu"], "--strategy"),
        (["--strategy", "tpu"], "--tpu"),
        (["--tpu", "local"], "--tpu"),
        (["--timeout_s", "-1"], "--timeout_s"),
        (["--smoke", "--bogus"], "--bogus"),
    ],
)
def test_bad_flag_exits_2_with_one_line(args, flag, tmp_path):
    result = _run(["--out_dir", str(tmp_path), *args], timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0] and "error" in lines[0], result.stderr
    assert os.listdir(tmp_path) == []


def test_out_dir_that_is_a_file_exits_2(tmp_path):
    path = tmp_path / "file"
    path.write_text("")
    result = _run(["--smoke", "--out_dir", str(path)], timeout=60)
    assert result.returncode == 2 and "--out_dir" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_strategy_names_match_the_library():
    from supcon_tf import data, distribute

    assert accelerator_check.STRATEGIES == distribute.STRATEGY_NAMES
    assert accelerator_check.AUGMENT_MODES == data.AUGMENT_ON


def test_batch_ladder_and_configs():
    assert accelerator_check.batch_ladder(1024) == [1024, 512, 256, 128, 64, 32, 16, 8, 4, 2]
    assert accelerator_check.batch_ladder(3) == [3]
    names = [c[0] for c in accelerator_check.precision_configs("default")]
    assert names == ["float32", "mixed_float16", "mixed_float16_xla"]
    assert [c[1] for c in accelerator_check.precision_configs("tpu")][1:] == ["mixed_bfloat16"] * 2
    assert accelerator_check.looks_like_oom("ResourceExhaustedError: OOM when allocating tensor")
    assert not accelerator_check.looks_like_oom("InvalidArgumentError: shapes do not match")


def test_timeout_still_writes_both_files(tmp_path):
    result = _run(["--smoke", "--out_dir", str(tmp_path), "--timeout_s", "2"], timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    with open(tmp_path / accelerator_check.JSON_NAME) as f:
        report = json.load(f)
    assert report["facts"]["status"] == "timed out"
    assert {row["status"] for row in report["train_step"] + report["augmentation"] + report["loss"]} == {"timed out"}
    text = (tmp_path / accelerator_check.MD_NAME).read_text()
    assert "facts not collected: timed out" in text and "Not measured: timed out" in text
