r"""Linear evaluation: a linear classifier on the frozen encoder of a pre-trained model.

    supcon-linear-eval --preset digits_linear --pretrained runs/digits_supcon/model.keras \
        --model_dir runs/digits_supcon_linear

    result = f"test top-1 {metrics['test_top1']:.4f}" if "test_top1" in metrics else "test split not evaluated"
    print(f"linear evaluation: {result}; outputs in {config.model_dir}")
"""

from experiments import common


def main():
    config = common.config_from_flags(method="linear")
    metrics = common.run_stage(config)
    if metrics is None:
        return 0
    print(f"linear evaluation: test top-1 {metrics['test_top1']:.4f}; outputs in {config.model_dir}")
    return 0


def entry():
    common.run_binary(main)


if __name__ == "__main__":
    entry()
