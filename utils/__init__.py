"""Where the algorithm packages are composed into runs.

train/       the two training stages (stage 1 = clustering baseline, stage 2 = MMM)
evaluation/  the test protocols, metrics, feature extraction and pictures
bench/       the parts of the benchmark scripts (scripts/bench_*.py), outside the runs
The flat modules are the run plumbing: flags (args), entry-point wrapper (cli), run directories and logs
(run, runlog), checkpoints and the stage-1 -> stage-2 hand-off (checkpoint, artifacts), device and
multi-process helpers (device, distributed).
"""
