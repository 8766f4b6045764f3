"""Parts of the benchmark scripts (scripts/bench_*.py); nothing in training or evaluation imports them.

speed.py             timed training parts of scripts/bench_train.py (one step of each stage, extraction,
                     clustering) on generated inputs
inputs.py            deterministic SYSU-MM01 / RegDB-sized inputs of scripts/bench_eval.py, bench_mmlm.py and
                     bench_clustering.py, generated on first use
learning_metrics.py  ground-truth diagnostics of scripts/bench_learning.py (matching accuracy, chance level)
learning_report.py   the tables, their reading and the picture of scripts/bench_learning.py
"""
