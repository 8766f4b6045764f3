"""Where the algorithm packages are composed into runs.

train/       the two training stages (stage 1 = clustering baseline, stage 2 = MMM)
evaluation/  the test protocols, metrics, feature extraction and pictures
bench/       the parts of the benchmark scripts (scripts/bench_*.py), outside the runs
The flat modules are the entry layer and the run plumbing. Entry layer (the only code that sees the
command line's namespace): the flags (args, arg_types), their checks (arg_checks), the typed settings
made from them (settings) and the entry points' bodies (cli). Plumbing: run directories, locks, identity
and logs (run, runlock, run_identity, runlog), checkpoints and the stage-1 -> stage-2 hand-off
(checkpoint, artifacts), device and multi-process helpers (device, distributed: every collective).
"""
