"""The digits reproduction report: does SupCon beat cross-entropy here, and how sure can we be?

    compute.py   registers the protocol, tunes, trains (only through supcon_tf.runner.run), writes results.json
    evaluate.py  the final evaluation, the only reader of the test split (once, after all training)
    verdicts.py  the rules: verdicts, convergence, spread (pure functions, tested on hand-made results)
    render.py    REPORT.md from results.json only; figures.py its plots, readme.py README.md's tables (same source)
    config.py    the stages (RunConfigs composed from the digits presets), searches, grid and thresholds
    monitor.py   the per-epoch validation curve (kNN top-1 on the validation split) of every run

Run it with `python -m experiments.report` (see `__main__.py`).
"""
