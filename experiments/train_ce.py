r"""The cross-entropy baseline: encoder + linear classifier trained end to end.

    supcon-train-ce --preset digits_ce --model_dir runs/digits_ce
"""

from experiments import common

entry = common.stage_entry(methods=("ce",), summary=common.top1_summary("cross-entropy"))

if __name__ == "__main__":
    entry()
