r"""Contrastive pre-training (SupCon or SimCLR) of an encoder + projection head.

    supcon-pretrain --preset digits_supcon --model_dir runs/digits_supcon
    python -m experiments.pretrain --preset cifar10_supcon --data_dir ~/tensorflow_datasets --model_dir runs/c10

Writes config.json, checkpoints, backups, TensorBoard logs, training_log.csv,
model.keras, saved_model/ (the encoder) and metrics.json into --model_dir.
"""

from experiments import common


def main():
    config = common.config_from_flags()
    if config.method not in ("supcon", "simclr"):
        raise ValueError(f"`method` must be supcon or simclr for pre-training, received: method={config.method!r}")
    metrics = common.run_stage(config)
    if metrics is None:
        return 0
    print(f"pre-training done: final loss {metrics['final_train_loss']:.4f}; outputs in {config.model_dir}")
    return 0


def entry():
    common.run_binary(main)


if __name__ == "__main__":
    entry()
