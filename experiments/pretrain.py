r"""Contrastive pre-training (SupCon or SimCLR) of an encoder + projection head.

    supcon-pretrain --preset digits_supcon --model_dir runs/digits_supcon
    python -m experiments.pretrain --preset cifar10_supcon --data_dir ~/tensorflow_datasets --model_dir runs/c10

Writes config.json, checkpoints, backups, TensorBoard logs, training_log.csv,
model.keras, saved_model/ (the encoder) and metrics.json into --model_dir.
"""

from experiments import common

entry = common.stage_entry(
    methods=("supcon", "simclr"),
    summary=lambda metrics: f"pre-training done: final loss {metrics['final_train_loss']:.4f}",
)

if __name__ == "__main__":
    entry()
