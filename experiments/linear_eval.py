r"""Linear evaluation: a linear classifier on the frozen encoder of a pre-trained model.

    supcon-linear-eval --preset digits_linear --pretrained runs/digits_supcon/model.keras \
        --model_dir runs/digits_supcon_linear

Takes dataset, data_dir, image_size and channels from the pre-training run's
config.json unless a flag sets them. Prints and writes (metrics.json) the
test top-1; saves the probe and its SavedModel.
"""

from experiments import common

entry = common.stage_entry(methods=("linear",), summary=common.top1_summary("linear evaluation"))

if __name__ == "__main__":
    entry()
