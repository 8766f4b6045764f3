"""Typed settings of a run, made once from the parsed flags by the entry layer.

:func:`stage1_settings`, :func:`stage2_settings` and :func:`test_settings` turn the argparse namespace
(after :func:`utils.args.parse` has checked it and filled the dataset defaults) into frozen
dataclasses. Library code takes the part it needs (``settings.cluster``, ``settings.eval`` ...), never
the namespace. ``RunSettings.flags`` keeps the parsed flags as a dict: the run's identity, written to
``args.json`` and every checkpoint and compared on ``--resume`` (utils/run_identity.py).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from data.specs import IR_TO_RGB, RGB_TO_IR, SPECS

#: Resampling of stage 1 (its training batches and the features it clusters), as released.
CLUSTER_INTERPOLATION = "bicubic"
#: Resampling of stage 2's training batches and of every test protocol (PIL's ANTIALIAS in the release).
TEST_INTERPOLATION = "lanczos"


@dataclass(frozen=True)
class DataSettings:
    """Where the data is and how it is read."""

    dataset: str
    data_dir: str
    trial: Optional[int]
    cache_dir: Optional[str]  # --cache-dir as given (None: <data-dir>/mmm_cache when it exists)
    workers: int
    img_h: int
    img_w: int


@dataclass(frozen=True)
class ModelSettings:
    """The network and how it sits on the devices."""

    arch: str
    pretrained: str
    channels_last: bool
    sync_bn: bool


@dataclass(frozen=True)
class EvalSettings:
    """A test protocol run (:func:`utils.evaluation.protocols.evaluate`)."""

    dataset: str
    data_dir: str
    trial: Optional[int]
    img_h: int
    img_w: int
    modes: Tuple[str, ...] = ("all",)
    shot: int = 1
    gallery_trials: Optional[int] = None  # None: the dataset's
    directions: Optional[Tuple[str, ...]] = None  # None: every direction of the dataset
    flip: bool = False
    batch_size: int = 128
    workers: int = 2


@dataclass(frozen=True)
class ClusterSettings:
    """Stage 1's Jaccard + DBSCAN pseudo-labelling (method.md D.2, D.3).

    Attributes:
        eps: DBSCAN radius on the Jaccard distance (--eps).
        k1, k2: k-reciprocal and query-expansion neighbours of the intra-modality Jaccard distance.
        k1_joint, k2_joint: the same for the joint (modality-balanced) Jaccard distance.
        knn: the exact k-NN search, "torch" or "faiss".
    """

    eps: float
    k1: int
    k2: int
    k1_joint: int
    k2_joint: int
    knn: str = "torch"


@dataclass(frozen=True)
class MemorySettings:
    """Stage 1's cluster memories: temperature tau, momentum mu of M <- mu*M + (1-mu)*f, and the hard-sample
    update instead of the sequential one (--use-hard)."""

    temp: float
    momentum: float
    use_hard: bool


@dataclass(frozen=True)
class Schedule:
    """How long and how a stage trains, and when it evaluates."""

    epochs: int
    lr: float
    weight_decay: float
    eval_step: int
    print_freq: int
    seed: int
    report_ari: bool = False


@dataclass(frozen=True)
class Stage1Batches:
    """Stage 1's sampler: ``batch_size`` images of pseudo-ids x ``num_instances``, ``iters`` per epoch."""

    iters: int
    batch_size: int
    num_instances: int
    camera_aware: bool
    step_size: int


@dataclass(frozen=True)
class Stage2Batches:
    """Stage 2's sampler: ``batch_ids`` identities x ``num_pos`` images per modality."""

    batch_ids: int
    num_pos: int
    warm_epochs: int


@dataclass(frozen=True)
class LossSettings:
    """Stage 2's loss terms (method.md F.6): L = L_id + L_tri + intra_weight L_intra + inter_weight L_inter,
    the identity loss "soft" (clean-probability weighted) or "plain", the triplet margin, the distance of
    the intra-modality term ("l1" or "l2") and the first (0-based) epoch of the inter-modality term."""

    id_loss: str = "soft"
    margin: float = 0.2
    intra_weight: float = 0.5
    inter_weight: float = 0.05
    intra_loss: str = "l1"
    inter_start_epoch: int = 0


@dataclass(frozen=True)
class MatchSettings:
    """Stage 2's multi-memory learning and matching (method.md E).

    Attributes:
        num_memories: k-means sub-centres per cluster.
        matching: "greedy" (many-to-one, released) or "hungarian" (one-to-one, paper).
        match_cost: "ir2rgb" (released) or "rgb2ir" (paper).
    """

    num_memories: int
    matching: str
    match_cost: str


@dataclass(frozen=True)
class RunSettings:
    """The run folder and its identity."""

    folder: str  # the run folder's name, as released: "baseline" (stage 1), "mmm" (stage 2)
    output_dir: str
    resume: bool
    device: str
    amp: Any  # --amp: "off" | "bf16" | "fp16" | True (bare); resolved for the device in the run context
    flags: Dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Stage1Settings:
    run: RunSettings
    data: DataSettings
    model: ModelSettings
    schedule: Schedule
    batches: Stage1Batches
    cluster: ClusterSettings
    memory: MemorySettings
    eval: EvalSettings


@dataclass(frozen=True)
class Stage2Settings:
    run: RunSettings
    data: DataSettings
    model: ModelSettings
    schedule: Schedule
    batches: Stage2Batches
    loss: LossSettings
    match: MatchSettings
    eval: EvalSettings
    resume_net1: str
    baseline_artifact: Optional[str]
    init: str


@dataclass(frozen=True)
class TestSettings:
    """test.py: the checkpoint(s), the protocol and where the results go. ``eval.img_h``/``img_w`` are
    None where the checkpoint's training size applies; ``trial`` may be "all"."""

    data: DataSettings
    eval: EvalSettings
    arch: Optional[str]
    device: str
    amp: Any
    resume_net1: str
    out: Optional[str]
    force: bool
    visualize: int
    rerank: Any  # clustering.rerank.RerankParams or None


def _data(args: argparse.Namespace) -> DataSettings:
    return DataSettings(dataset=args.dataset, data_dir=args.data_dir, trial=args.trial, cache_dir=args.cache_dir,
                        workers=args.workers, img_h=args.img_h, img_w=args.img_w)


def _run(args: argparse.Namespace, folder: str) -> RunSettings:
    return RunSettings(folder=folder, output_dir=args.output_dir, resume=args.resume, device=args.device,
                       amp=args.amp, flags=dict(vars(args)))


def _model(args: argparse.Namespace) -> ModelSettings:
    return ModelSettings(arch=args.arch, pretrained=args.pretrained, channels_last=args.channels_last,
                         sync_bn=args.sync_bn)


def _schedule(args: argparse.Namespace) -> Schedule:
    return Schedule(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, eval_step=args.eval_step,
                    print_freq=args.print_freq, seed=args.seed, report_ari=args.report_ari)


def stage1_settings(args: argparse.Namespace) -> Stage1Settings:
    """Stage 1's settings; its per-epoch evaluation is the dataset's own protocol set (every SYSU mode,
    every gallery trial, visible -> infrared) with flip-averaged features."""
    spec = SPECS[args.dataset]
    return Stage1Settings(
        run=_run(args, "baseline"), data=_data(args), model=_model(args), schedule=_schedule(args),
        batches=Stage1Batches(iters=args.iters, batch_size=args.batch_size, num_instances=args.num_instances,
                              camera_aware=not args.no_cam, step_size=args.step_size),
        cluster=ClusterSettings(eps=args.eps, k1=args.k1, k2=args.k2, k1_joint=args.k1_joint,
                                k2_joint=args.k2_joint, knn=args.knn),
        memory=MemorySettings(temp=args.temp, momentum=args.momentum, use_hard=args.use_hard),
        eval=EvalSettings(dataset=args.dataset, data_dir=args.data_dir, trial=args.trial, img_h=args.img_h,
                          img_w=args.img_w, modes=tuple(spec.eval_modes), gallery_trials=spec.gallery_trials,
                          directions=(RGB_TO_IR,), flip=True, batch_size=args.test_batch, workers=args.workers))


def stage2_settings(args: argparse.Namespace) -> Stage2Settings:
    """Stage 2's settings; its per-epoch evaluation follows --mode, --shot, --eval-trials and --flip."""
    return Stage2Settings(
        run=_run(args, "mmm"), data=_data(args), model=_model(args), schedule=_schedule(args),
        batches=Stage2Batches(batch_ids=args.batch_ids, num_pos=args.num_pos, warm_epochs=args.warm_epochs),
        loss=LossSettings(id_loss=args.id_loss, margin=args.margin, intra_weight=args.intra_weight,
                          inter_weight=args.inter_weight, intra_loss=args.intra_loss,
                          inter_start_epoch=args.inter_start_epoch),
        match=MatchSettings(num_memories=args.num_memories, matching=args.matching, match_cost=args.match_cost),
        eval=EvalSettings(dataset=args.dataset, data_dir=args.data_dir, trial=args.trial, img_h=args.img_h,
                          img_w=args.img_w, modes=(args.mode,), shot=args.shot, gallery_trials=args.eval_trials,
                          directions=(RGB_TO_IR,), flip=args.flip, batch_size=args.test_batch,
                          workers=args.workers),
        resume_net1=args.resume_net1, baseline_artifact=args.baseline_artifact, init=args.init)


def requested_directions(tvsearch: bool, direction: str) -> Optional[Tuple[str, ...]]:
    """The directions --direction / --tvsearch ask for (None = every direction of the dataset)."""
    if tvsearch:
        return (IR_TO_RGB,)
    return None if direction == "both" else (direction,)


def test_settings(args: argparse.Namespace) -> TestSettings:
    """test.py's settings (--rerank-* resolved to a RerankParams, or None without --rerank)."""
    from clustering.rerank import RerankParams

    rerank = None
    if args.rerank:
        default = RerankParams()
        rerank = RerankParams(args.rerank_k1 or default.k1, args.rerank_k2 or default.k2,
                              default.lam if args.rerank_lambda is None else args.rerank_lambda)
    data = _data(args)
    return TestSettings(
        data=data, arch=args.arch, device=args.device, amp=args.amp, resume_net1=args.resume_net1, out=args.out,
        force=args.force, visualize=args.visualize, rerank=rerank,
        eval=EvalSettings(dataset=args.dataset, data_dir=args.data_dir, trial=args.trial, img_h=args.img_h,
                          img_w=args.img_w, modes=(args.mode,), shot=args.shot, gallery_trials=args.gallery_trials,
                          directions=requested_directions(args.tvsearch, args.direction), flip=args.flip,
                          batch_size=args.test_batch, workers=args.workers))
