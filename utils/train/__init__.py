"""The two training stages, composed from the algorithm packages (data/, clustering/, memory/, model/).

stage1.py        stage 1 (method.md D): per epoch cluster (Jaccard + DBSCAN) -> memories -> train, in an
                 intra-modality phase and a joint cross-modality phase; then the hand-off to stage 2
stage1_steps.py  its building blocks: clustering of an epoch, cluster memories, loaders, one iteration's losses
stage2.py        stage 2 (method.md E, F): multi-memory matching of the stage-1 labels, then per epoch
                 clean probabilities -> train -> prototypes
stage2_steps.py  its building blocks: learning-rate schedule, samplers, forward (Stage2Batch), losses,
                 the passes
loop.py          the training loop of both stages (one epoch of steps, the checked optimizer step, when
                 to evaluate)
network.py       the one model builder (both stages and the learning benchmark)
epoch_end.py     the end of an epoch (evaluate, best, checkpoints, metrics line, log) and the resume,
                 shared by both stages
divergence.py    the one-line stop for a non-finite loss (epoch, last checkpoint, what to try), both stages
callbacks.py     observers of training events (tests, tools), passed in by the caller; none by default

Every function here takes typed settings (utils/settings.py) or the part of them it needs, never the
command line's namespace.
"""
