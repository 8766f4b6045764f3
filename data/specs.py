"""Every difference between SYSU-MM01, RegDB and LLCM, written once.

Entry scripts and pipelines never branch on the dataset name; they read a :class:`DatasetSpec`
(and :mod:`data.datasets` dispatches the readers). SYSU-MM01 and RegDB values are the released
code's (method.md D.1, H); LLCM keeps SYSU's settings except the Jaccard k1 = 25, as the
unsupervised codes that support it do (dataset_layouts.md section 4).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

# Gallery removal rules of the evaluation (implemented in utils.evaluation.metrics):
REMOVE_NONE = "none"                       # RegDB: nothing is removed
REMOVE_SYSU_SAME_ROOM = "sysu_same_room"   # SYSU: a camera-3 query never sees camera 2 (same room)
REMOVE_SAME_ID_SAME_CAM = "same_id_same_camera"  # LLCM: drop the query's identity in the query's camera
# Generic names of the two search directions, as the training stages request them for any dataset:
# visible (rgb) queries against an infrared gallery, and the reverse. A spec names them its own way.
RGB_TO_IR, IR_TO_RGB = "visible2thermal", "thermal2visible"


@dataclass(frozen=True)
class DatasetSpec:
    """Per-dataset constants.

    Attributes:
        name: the key in :data:`SPECS` (``"sysu"``, ``"regdb"``, ``"llcm"``).
        display_name: how people write it (``"SYSU-MM01"``, ``"RegDB"``, ``"LLCM"``).
        eps: DBSCAN radius on the Jaccard distance (method.md D.1).
        k1: k1 of the intra-modality Jaccard distance (its k2 is 6 for every dataset, the --k2 default).
        k1_joint, k2_joint: modality-balanced Jaccard parameters of the joint phase (D.3).
        iters: stage-1 iterations per epoch (released README).
        has_trials: RegDB needs ``--trial 1..10`` (one training run per split).
        eval_modes: search modes (SYSU all/indoor; the others only "all").
        shots: allowed gallery images per (identity, camera): SYSU (1, 10), the others (1,).
        gallery_trials: random gallery samplings of the test protocol (SYSU 10, RegDB 1 = none, LLCM 10).
        directions: result names of the (visible -> infrared, infrared -> visible) searches; empty for
            SYSU, which is searched infrared -> visible only and names its results by mode.
        removal: gallery removal rule of the metric (one of the REMOVE_* constants).
        real_counts: (name, count) pairs of the real dataset, for ``scripts/inspect_dataset.py``.
        train_lists, test_lists: the files that define the training images and the test protocol, for
            messages (``{trial}`` stands for the RegDB trial).
    """

    name: str
    display_name: str
    eps: float
    k1: int
    k1_joint: int
    k2_joint: int
    iters: int
    has_trials: bool
    eval_modes: Tuple[str, ...]
    shots: Tuple[int, ...]
    gallery_trials: int
    directions: Tuple[str, ...]
    removal: str
    real_counts: Tuple[Tuple[str, int], ...]
    train_lists: str = ""
    test_lists: str = ""

    @property
    def uses_cameras(self) -> bool:
        """Whether the metric needs camera ids (every rule except "none")."""
        return self.removal != REMOVE_NONE

    def result_name(self, mode: str, trial: Optional[int]) -> str:
        """Base name of test.py's result files: ``test_sysu_all``, ``test_regdb_trial1``, ``test_llcm``."""
        parts = [f"test_{self.name}"]
        if len(self.eval_modes) > 1:
            parts.append(mode)
        if self.has_trials:
            parts.append(f"trial{trial}")
        return "_".join(parts)


SPECS = {
    "sysu": DatasetSpec(
        name="sysu", display_name="SYSU-MM01", eps=0.6, k1=30, k1_joint=40, k2_joint=32, iters=200,
        has_trials=False, eval_modes=("all", "indoor"), shots=(1, 10), gallery_trials=10, directions=(),
        removal=REMOVE_SYSU_SAME_ROOM,
        real_counts=(("train_rgb_images", 22258), ("train_ir_images", 11909), ("train_ids", 395),
                     ("query_images", 3803), ("gallery_images_all", 301), ("gallery_images_indoor", 112)),
        train_lists="exp/train_id.txt and exp/val_id.txt", test_lists="exp/test_id.txt"),
    "regdb": DatasetSpec(
        name="regdb", display_name="RegDB", eps=0.3, k1=30, k1_joint=38, k2_joint=18, iters=100,
        has_trials=True, eval_modes=("all",), shots=(1,), gallery_trials=1,
        directions=("visible2thermal", "thermal2visible"), removal=REMOVE_NONE,
        real_counts=(("train_rgb_images", 2060), ("train_ir_images", 2060), ("test_rgb_images", 2060),
                     ("test_ir_images", 2060), ("train_ids", 206), ("test_ids", 206)),
        train_lists="idx/train_visible_{trial}.txt and idx/train_thermal_{trial}.txt",
        test_lists="idx/test_visible_{trial}.txt and idx/test_thermal_{trial}.txt"),
    "llcm": DatasetSpec(
        name="llcm", display_name="LLCM", eps=0.6, k1=25, k1_joint=40, k2_joint=32, iters=200,
        has_trials=False, eval_modes=("all",), shots=(1,), gallery_trials=10,
        directions=("visible2infrared", "infrared2visible"), removal=REMOVE_SAME_ID_SAME_CAM,
        # dataset_layouts.md section 4; the query and gallery sizes are not stated by any source
        real_counts=(("train_rgb_images", 16946), ("train_ir_images", 13975), ("train_ids", 713),
                     ("test_ids", 351)),
        train_lists="idx/train_vis.txt and idx/train_nir.txt", test_lists="idx/test_id.txt"),
}


def resolve_directions(spec: DatasetSpec, requested) -> Tuple[int, ...]:
    """Indices (0 = visible -> infrared, 1 = infrared -> visible) of the requested searches.

    ``requested``: None (every direction of the dataset) or names, each either the spec's own
    (``visible2infrared`` for LLCM) or a generic one (``visible2thermal``/``thermal2visible``, what the
    training stages ask for on any dataset).

    Raises:
        DataError: an unknown name, or no name at all.
    """
    from .sample import DataError

    if requested is None:
        return tuple(range(len(spec.directions)))
    out = []
    for name in requested:
        if name in spec.directions:
            out.append(spec.directions.index(name))
        elif name in (RGB_TO_IR, IR_TO_RGB):
            out.append((RGB_TO_IR, IR_TO_RGB).index(name))
        else:
            raise DataError(f"{spec.display_name} search directions must be among {spec.directions}, "
                            f"got {list(requested)}")
    if not out:
        raise DataError(f"{spec.display_name} search directions must be among {spec.directions}, got none")
    return tuple(dict.fromkeys(out))
