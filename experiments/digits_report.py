"""`python -m experiments.digits_report`: the digits reproduction report (the program is `experiments/report/`).

Same flags as `python -m experiments.report` (`--quick`, `--render_only`,
`--readme`, `--output_dir`, `--work_dir`, `--overwrite`, `--noplots`).
"""

from experiments.report.__main__ import entry

if __name__ == "__main__":
    entry()
