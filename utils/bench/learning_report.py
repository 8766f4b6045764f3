"""Reporting of ``scripts/bench_learning.py``: the printed tables, their reading, and ``learning.png``.

Input is the ``learning.json`` content (a dict with ``settings``, ``stage1_epochs``, ``mmlm``, ``test``,
``summary``); nothing here reads files or runs anything.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from utils.bench.learning_metrics import METRICS, RULES

GALLERY_TRIALS = 10
# The rows of the test table, in the order each step builds on the previous one: random distances, the network
# stage 1 starts from (before any training), the stage-1 checkpoint, the stage-2 checkpoint.
TEST_ROWS = ("chance", "init", "stage1", "stage2")
ROW_LABELS = {"chance": "chance", "init": "untrained", "stage1": "stage 1", "stage2": "stage 2"}
# The stage-1 metrics.jsonl fields reported per epoch: (record key, table header, format).
EPOCH_COLUMNS = (("ari_rgb", "ari_rgb", ".3f"), ("ari_ir", "ari_ir", ".3f"), ("ari_joint", "ari_joint", ".3f"),
                 ("rgb_clusters", "rgb_cl", "d"), ("ir_clusters", "ir_cl", "d"),
                 ("joint_cross_modal_clusters", "cross", "d"), ("associate_rate", "assoc", ".2f"),
                 ("joint_trained", "trained", ""))
EPOCH_KEYS = tuple(key for key, _, _ in EPOCH_COLUMNS)


def plot(report: Dict, path: str) -> None:
    """Left: ARI per stage-1 epoch (skipped joint steps marked); right: Rank-1 / mAP bars with std."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = report["stage1_epochs"]
    x = np.arange(1, len(ep) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, style in (("ari_rgb", "o-"), ("ari_ir", "s-"), ("ari_joint", "^-")):
        y = np.array([np.nan if e[key] is None else e[key] for e in ep], float)
        a.plot(x, y, style, label=key)
    skip = [(i + 1, e["ari_joint"] or 0.0) for i, e in enumerate(ep) if e["joint_trained"] is False]
    if skip:
        a.plot(*zip(*skip), "rx", ms=12, mew=2, label="joint step skipped")
    n_intra = sum(e["phase"] == "intra" for e in ep)
    if 0 < n_intra < len(ep):
        a.axvline(n_intra + 0.5, color="grey", ls=":", label="intra | joint phase")
    a.set_xticks(x, [f"{e['phase'][0]}{e['epoch']}" for e in ep])
    a.set(xlabel="stage-1 epoch (i = intra, j = joint)", ylabel="ARI vs true identities",
          title="pseudo-label quality")
    a.legend(fontsize="small")
    t = report["test"]
    at = np.arange(len(TEST_ROWS))
    for j, (k, name) in enumerate((("r1", "Rank-1"), ("mAP", "mAP"))):
        b.bar(at + (j - 0.5) * 0.38, [t[g]["mean"][k] for g in TEST_ROWS], 0.38,
              yerr=[t[g]["std"][k] for g in TEST_ROWS], capsize=4, label=name)
    b.set_xticks(at, [ROW_LABELS[g] for g in TEST_ROWS])
    b.set(ylabel="% (mean ± std over gallery trials)", title=f"test, all-search, {GALLERY_TRIALS} trials")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def print_table(r: Dict) -> None:
    """The readable summary: stage-1 epochs, MMLM accuracy, test numbers next to chance."""
    print("\n-- stage 1 per epoch. ari_*: adjusted Rand index of the pseudo-labels vs the true ids (1 = perfect,"
          "\n   0 = chance); rgb_cl / ir_cl: DBSCAN clusters; cross: joint clusters holding both modalities;"
          "\n   assoc: their share of the joint clusters; trained: the joint step ran (False: too few cross clusters)")
    print(f"{'phase':6}{'ep':>3}" + "".join(f"{head:>10}" for _, head, _ in EPOCH_COLUMNS))
    for e in r["stage1_epochs"]:
        print(f"{e['phase']:6}{e['epoch']:3d}" + "".join(f"{_fmt(e[k], spec):>10}" for k, _, spec in EPOCH_COLUMNS))
    m = r["mmlm"]
    print(f"\n-- MMLM on the stage-1 artifact: {m['num_rgb_clusters']} visible, {m['num_ir_clusters']} infrared "
          "clusters."
          "\n   accuracy: share of visible clusters matched to an infrared cluster of the same majority identity;"
          "\n   ari_joint: ARI of [visible; infrared] labels after matching; unmatched: ir clusters nobody chose;"
          "\n   shared: visible clusters whose partner another visible cluster also chose")
    for rule in RULES:
        g = m[rule]
        print(f"   {rule:9} accuracy {g['accuracy']:.3f}  ari_joint {g['ari_joint']:.3f}  ari_rgb "
              f"{m['ari_rgb_before']:.3f} -> {g['ari_rgb']:.3f}  unmatched {g['ir_unmatched']}  shared {g['rgb_shared']}")
    print(f"\n-- test.py all-search, % as mean ± std over {GALLERY_TRIALS} gallery trials. chance: random distances, "
          f"{r['test']['chance']['draws']} draws\n   per trial; untrained: the network stage 1 starts from "
          f"({r['settings'].get('weights', {}).get('source', r['settings']['pretrained'])}), before any training;"
          "\n   r1 / r5: right identity among the first 1 / 5 distinct ids; mAP: mean average precision; mINP: mean"
          "\n   inverse negative penalty (the hardest match)")
    for g in TEST_ROWS:
        t = r["test"][g]
        print(f"   {ROW_LABELS[g]:9}" + "".join(f"  {k} {t['mean'][k]:6.2f}±{t['std'][k]:5.2f}" for k in METRICS))
    s = r["summary"]
    print(f"\n-- summary: the joint step trained in {s['joint_trained_epochs']} of {s['joint_epochs']} joint epochs; "
          f"stage 1 beats the untrained network (Rank-1 and mAP both higher): {s['stage1_beats_init']}; stage 2 beats"
          f"\n   stage 1: {s['stage2_beats_stage1']}; Rank-1 / mAP in multiples of chance: " + ", ".join(
              f"{ROW_LABELS[g]} {_fmt(s[g + '_r1_x_chance'], '.2f')} / {_fmt(s[g + '_mAP_x_chance'], '.2f')}"
              for g in TEST_ROWS[1:]))


def print_reading(r: Dict) -> None:
    """What the numbers of this run mean: warnings explained, and the ranges measured during development."""
    s, m, joint = r["summary"], r["mmlm"], [e for e in r["stage1_epochs"] if e["phase"] == "joint"]
    print("\n-- reading")
    skipped = [e["epoch"] for e in joint if e["joint_trained"] is False]
    if skipped:
        print(f"   joint step skipped in joint epoch(s) {skipped}: the joint clustering found too few clusters holding"
              "\n   both modalities to fill a batch, so those epochs trained the intra-modality memories only. It"
              "\n   means the two modalities' features are still far apart (typical from random weights).")
    if m["greedy"]["ari_rgb"] < m["ari_rgb_before"] - 0.05:
        print("   the greedy matching lowered the visible ARI: several visible clusters took the same infrared"
              "\n   partner and now share its label (many-to-one, as released). Expected when stage 1 splits people"
              "\n   into more visible than infrared clusters; stage 2 can still gain if the partners are right.")
    print("   on the development machine (generated seed-29 data, the defaults, README 'What to expect on CPU'):"
          "\n   joint step in 4/4 joint epochs; all-search Rank-1 / mAP untrained 27 / 35, stage 1 83 / 86, stage 2"
          "\n   90 / 92, chance 5 / 12. Other data, seeds and CPUs move these by several points; each row above the"
          f"\n   one before is the sign of learning. Here: stage 1 above the untrained network: {s['stage1_beats_init']},"
          f"\n   stage 2 above stage 1: {s['stage2_beats_stage1']}.")
