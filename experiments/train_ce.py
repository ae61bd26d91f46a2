r"""The cross-entropy baseline: encoder + linear classifier trained end to end.

    supcon-train-ce --preset digits_ce --model_dir runs/digits_ce
"""

from experiments import common


def main():
    config = common.config_from_flags(method="ce")
    metrics = common.run_stage(config)
    if metrics is None:
        return 0
    result = f"test top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else "test split not evaluated"
    print(f"cross-entropy: {result}; outputs in {config.model_dir}")
    return 0


def entry():
    common.run_binary(main)


if __name__ == "__main__":
    entry()
