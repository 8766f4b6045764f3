"""LLCM (issue 14): the reader on generated data against the generator's bookkeeping, the test protocol
on a hand-made tree with known gallery draws, ``eval_llcm`` known answers (the same-identity
same-camera removal), bad input as one-line errors, test.py's 1-based epoch, re-ranked results and
refusals on LLCM. The wiring of the datasets: tests/test_architecture.py; the end-to-end run
baseline_llcm.py -> main.py -> test.py: tests/test_e2e_llcm.py."""
import json
import os
import random
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import datasets, llcm
from data.sample import IR, RGB, DataError
from data.specs import SPECS
from data.synthetic_llcm import generate_llcm
from utils.evaluation import metrics
from utils.evaluation.metrics import eval_llcm, eval_protocol, eval_sysu

from e2e_harness import entry_main, run_main

ROOT = Path(__file__).resolve().parents[1]
H, W = 32, 16


# ---------------------------------------------------------------- generated data vs the generator

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A generated LLCM tree (15 ids: 10 train, 5 test, 2 extra) and its manifest."""
    root = str(tmp_path_factory.mktemp("llcm") / "LLCM")
    return root, generate_llcm(root, ids=15, seed=3, height=H, width=W, images_per_cam=(2, 3))


@pytest.fixture
def broken(synth, tmp_path):
    """A private copy of the generated tree, for tests that damage it."""
    root = str(tmp_path / "LLCM")
    shutil.copytree(synth[0], root)
    return root


def planned(manifest, modality, ids):
    """Counter of (pid, cam) -> image count from the manifest, for one modality and a set of ids."""
    return Counter({(p, c): n for p, m, c, n in manifest["images"] if m == modality and p in ids})


def test_reader_matches_the_generator(synth):
    root, manifest = synth
    split = manifest["split"]
    assert 0 in split["train"] + split["test"]                      # identity 0000 exists
    assert datasets.dataset_counts("llcm", root) == {k: manifest["counts"][k] for k in (
        "train_rgb_images", "train_ir_images", "train_ids", "test_ids", "test_rgb_images", "test_ir_images",
        "gallery_rgb_images", "gallery_ir_images")}
    rgb, ir = datasets.load_train("llcm", root)
    labels = {int(k): v for k, v in manifest["labels"].items()}
    assert sorted(labels.values()) == list(range(len(split["train"])))
    assert any(k != v for k, v in labels.items())                   # labels are not the folder numbers
    for samples, modality in ((rgb, RGB), (ir, IR)):
        folders = [int(os.path.basename(os.path.dirname(s.path))) for s in samples]
        assert [s.pid for s in samples] == [labels[f] for f in folders]
        assert {s.modality for s in samples} == {modality}
        assert Counter(zip(folders, (s.cam for s in samples))) == planned(manifest, modality, set(split["train"]))
    assert 3 not in {s.cam for s in ir}                              # camera 3 has no infrared mode


def test_test_protocol_matches_the_generator(synth):
    root, manifest = synth
    test = set(manifest["split"]["test"])
    protocols = datasets.load_protocols("llcm", root)
    assert list(protocols) == ["visible2infrared", "infrared2visible"]
    for name, (q_mod, g_mod) in (("visible2infrared", (RGB, IR)), ("infrared2visible", (IR, RGB))):
        splits = protocols[name]
        assert [s.name for s in splits] == [f"trial{t}" for t in range(10)]
        query = splits[0].query
        assert Counter((s.pid, s.cam) for s in query) == planned(manifest, q_mod, test)
        order = [("%04d" % s.pid, s.cam, os.path.basename(s.path)) for s in query]
        assert order == sorted(order)                                 # ids as strings, cameras, names
        assert {s.modality for s in query} == {q_mod}
        for sp in splits:
            assert sp.query is query
            assert [(s.pid, s.cam) for s in sp.gallery] == sorted(planned(manifest, g_mod, test))
    cam3 = os.path.join(root, "test_nir", "cam3")
    assert os.path.isdir(cam3) and not os.listdir(cam3)                # infrared camera 3: present, empty
    empty = os.path.join(root, manifest["empty_folder"])
    assert os.path.isdir(empty) and not os.listdir(empty)
    every = {s.pid for sps in protocols.values() for sp in sps for s in sp.query + sp.gallery}
    assert every == test and not every & set(manifest["split"]["extra"])


def test_image_paths_cover_train_and_test(synth):
    root, manifest = synth
    paths = datasets.image_paths("llcm", root)
    counts = manifest["counts"]
    assert len(paths) == len(set(paths)) == (counts["train_rgb_images"] + counts["train_ir_images"]
                                             + counts["test_rgb_images"] + counts["test_ir_images"])


def test_generator_is_deterministic(tmp_path):
    a = generate_llcm(str(tmp_path / "a"), 6, 1, H, W, (1, 2))
    b = generate_llcm(str(tmp_path / "b"), 6, 1, H, W, (1, 2))
    c = generate_llcm(str(tmp_path / "c"), 6, 2, H, W, (1, 2))
    assert a == b and a != c
    for name in ("train_vis.txt", "test_id.txt"):
        assert (tmp_path / "a" / "idx" / name).read_text() == (tmp_path / "b" / "idx" / name).read_text()
    with pytest.raises(DataError, match="--ids"):
        generate_llcm(str(tmp_path / "d"), 5, 1, H, W)


def test_make_synthetic_cli_llcm(tmp_path, capsys):
    out = tmp_path / "x"
    proc = run_main(entry_main("scripts/make_synthetic.py"), ["--layout", "llcm", "--out",
                    str(out), "--ids", "6", "--seed", "0", "--img-h", "32", "--img-w", "16",
                    "--images-per-cam", "1", "1"], capsys)
    assert proc.returncode == 0, proc.stderr
    assert "llcm: train_rgb_images=" in proc.stdout and (out / "idx" / "train_nir.txt").is_file()


# ---------------------------------------------------------------- the protocol on a hand-made tree

# (modality, camera, id) -> frame numbers; the names sort as strings, not as numbers: "f10_" < "f9_",
# "f1000_" < "f100_" ('0' < '_') and "f11_" < "f1_".
HAND = {(IR, 2, 3): (9, 10), (IR, 7, 3): (5, 40, 300), (IR, 1, 12): (1, 2, 3, 11), (IR, 2, 12): (7, 8),
        (IR, 1, 7): (1,), (RGB, 1, 3): (3, 20), (RGB, 5, 3): (100, 99, 1000), (RGB, 9, 12): (4,),
        (RGB, 2, 12): (50, 6), (RGB, 1, 7): (1,), (RGB, 4, 12): ()}      # id 7 is in no list; one empty folder


def hand_name(modality, cam, pid, frame):
    return f"{pid:04d}_c{cam:02d}_s000001_f{frame}_{'vis' if modality == RGB else 'nir'}.jpg"


def hand_folder(root, modality, cam, pid):
    return os.path.join(root, llcm.TEST_DIRS[modality], f"cam{cam}", f"{pid:04d}")


@pytest.fixture
def hand(tmp_path):
    """Test folders of HAND, ``idx/test_id.txt`` = "12,3" and an empty test_nir/cam3."""
    root = str(tmp_path / "hand")
    for (modality, cam, pid), frames in HAND.items():
        os.makedirs(hand_folder(root, modality, cam, pid))
        for f in frames:
            Image.new("RGB", (4, 8), (f % 256, 0, 0)).save(
                os.path.join(hand_folder(root, modality, cam, pid), hand_name(modality, cam, pid, f)))
    os.makedirs(os.path.join(root, "test_nir", "cam3"))
    os.makedirs(os.path.join(root, "idx"))
    Path(root, "idx", "test_id.txt").write_text("12,3\n")
    return root


def test_query_order_by_hand(hand):
    v2i = datasets.load_protocols("llcm", hand, directions=("visible2infrared",), gallery_trials=1)
    names = [os.path.basename(s.path) for s in v2i["visible2infrared"][0].query]
    assert names == [hand_name(RGB, 1, 3, f) for f in (20, 3)] + [hand_name(RGB, 5, 3, f) for f in (1000, 100, 99)] + \
        [hand_name(RGB, 2, 12, f) for f in (50, 6)] + [hand_name(RGB, 9, 12, 4)]
    assert [(s.pid, s.cam) for s in v2i["visible2infrared"][0].query][:2] == [(3, 1), (3, 1)]


def test_gallery_trials_by_hand(hand):
    """Infrared gallery groups (id 3 cam2: f10 f9 | id 3 cam7: f300 f40 f5 | id 12 cam1: f11 f1 f2 f3 |
    id 12 cam2: f7 f8). random.Random(0) draws indices 1,1,0,1 from sizes 2,3,4,2; Random(1) draws 0,2,0,1."""
    splits = datasets.load_protocols("llcm", hand, directions=("visible2infrared",))["visible2infrared"]
    picks = [[os.path.basename(s.path) for s in sp.gallery] for sp in splits]
    assert picks[0] == [hand_name(IR, 2, 3, 9), hand_name(IR, 7, 3, 40), hand_name(IR, 1, 12, 11),
                        hand_name(IR, 2, 12, 8)]
    assert picks[1] == [hand_name(IR, 2, 3, 10), hand_name(IR, 7, 3, 5), hand_name(IR, 1, 12, 11),
                        hand_name(IR, 2, 12, 8)]
    # every trial 0..9 replays the official code: global random.seed(trial), then random.choice over the
    # string-sorted listing of each (id, camera) folder that exists, ids sorted as 4-digit strings
    state = random.getstate()
    for direction, modality, cams in (("visible2infrared", IR, llcm.NIR_CAMS),
                                      ("infrared2visible", RGB, llcm.VIS_CAMS)):
        got = datasets.load_protocols("llcm", hand, directions=(direction,))[direction]
        for trial, sp in enumerate(got):
            random.seed(trial)
            want = []
            for pid in sorted(["%04d" % x for x in (12, 3)]):
                for cam in cams:
                    folder = hand_folder(hand, modality, cam, int(pid))
                    if os.path.isdir(folder) and os.listdir(folder):
                        want.append(random.choice(sorted(os.listdir(folder))))
            assert [os.path.basename(s.path) for s in sp.gallery] == want, (direction, trial)
    random.setstate(state)
    assert len({tuple(s.path for s in sp.gallery) for sp in splits}) > 1


def test_protocol_options_are_checked(hand):
    with pytest.raises(DataError, match="--mode indoor is not a LLCM search mode"):
        datasets.load_protocols("llcm", hand, modes=("indoor",))
    with pytest.raises(DataError, match="--shot"):
        datasets.load_protocols("llcm", hand, shot=10)
    with pytest.raises(DataError, match="directions"):
        datasets.load_protocols("llcm", hand, directions=("thermal",))
    # the generic names the training stages use map onto LLCM's own
    generic = datasets.load_protocols("llcm", hand, directions=("thermal2visible",), gallery_trials=2)
    assert list(generic) == ["infrared2visible"] and len(generic["infrared2visible"]) == 2


# ---------------------------------------------------------------- eval_llcm

# gallery pids [1, 2, 1, 3, 1], cams [4, 4, 2, 4, 4]
# q0 pid 1 cam 4, ranked g0..g4: g0 and g4 (pid 1, cam 4) removed -> kept ids 2, 1, 3: hit at 2
#    (R = 1): AP = 1/2, INP = 1/2, CMC rank 2
# q1 pid 2 cam 2, ranked g2 g3 g4 g1 g0: g1 is pid 2 but camera 4 -> kept; g2 is camera 2 but pid 1 -> kept
#    ids 1, 3, 1, 2, 1: hit at 4: AP = 1/4, INP = 1/4; distinct ids 1, 3, 2 -> CMC rank 3
# q2 pid 3 cam 4: its only match g3 is in camera 4 -> removed -> skipped
L_G_PIDS, L_G_CAMS = np.array([1, 2, 1, 3, 1]), np.array([4, 4, 2, 4, 4])
L_Q_PIDS, L_Q_CAMS = np.array([1, 2, 3]), np.array([4, 2, 4])
L_DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5],
                   [0.5, 0.4, 0.1, 0.2, 0.3],
                   [0.3, 0.2, 0.5, 0.1, 0.4]])


def test_eval_llcm_known_answer():
    cmc, mAP, mINP = eval_llcm(L_DIST, L_Q_PIDS, L_G_PIDS, L_Q_CAMS, L_G_CAMS, max_rank=5)
    np.testing.assert_allclose(cmc, [0, 0.5, 1.0, 1.0, 1.0])
    assert mAP == pytest.approx(0.375) and mINP == pytest.approx(0.375)
    # SYSU's rule (cam-3 queries only) removes nothing here: q0 hits at 1, q2 is valid
    cmc_s, map_s, _ = eval_sysu(L_DIST, L_Q_PIDS, L_G_PIDS, L_Q_CAMS, L_G_CAMS, max_rank=5)
    assert cmc_s[0] == pytest.approx(2 / 3) and map_s != pytest.approx(mAP)
    assert eval_protocol("same_id_same_camera", L_DIST, L_Q_PIDS, L_G_PIDS, L_Q_CAMS, L_G_CAMS, 5)[1] == mAP


def test_eval_llcm_removed_ties_and_torch_inputs():
    """A removed item tied with a kept one does not move the kept one; torch input gives the same."""
    d = np.array([[0.2, 0.2, 0.2, 0.1]])
    # g3 (pid 1, cam 4) removed; g0 (pid 9), g1 (pid 1, cam 5), g2 (pid 9) tie: stable order g0, g1 -> hit at 2
    got = eval_llcm(d, [1], [9, 1, 9, 1], [4], [4, 5, 4, 4], max_rank=3)
    np.testing.assert_allclose(got[0], [0, 1, 1])
    assert got[1] == pytest.approx(0.5)
    again = eval_llcm(torch.tensor(d), torch.tensor([1]), torch.tensor([9, 1, 9, 1]), torch.tensor([4]),
                      torch.tensor([4, 5, 4, 4]), max_rank=3)
    np.testing.assert_allclose(again[0], got[0])
    with pytest.raises(ValueError, match="q_camids"):
        eval_llcm(d, [1], [9, 1, 9, 1], None, None)
    with pytest.raises(ValueError, match="no query"):
        eval_llcm(np.array([[0.1]]), [1], [1], [4], [4])


def ref_llcm(d, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The protocol text with loops: stable ranking, drop same id + same camera, distinct-id CMC."""
    cmcs, aps, inps = [], [], []
    for i in range(d.shape[0]):
        order = [g for g in np.argsort(d[i], kind="stable") if not (g_pids[g] == q_pids[i] and g_cams[g] == q_cams[i])]
        rel = [g_pids[g] == q_pids[i] for g in order]
        if not any(rel):
            continue
        seen = list(dict.fromkeys(g_pids[g] for g in order))
        hit = seen.index(q_pids[i]) + 1
        cmcs.append([float(k >= hit) for k in range(1, max_rank + 1)])
        pos = [k for k, r in enumerate(rel, start=1) if r]
        aps.append(np.mean([(j + 1) / k for j, k in enumerate(pos)]))
        inps.append(len(pos) / pos[-1])
    if not cmcs:
        raise ValueError("no valid query")
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("block_cells", [1 << 19, 7])
def test_eval_llcm_random_equivalence(seed, block_cells, monkeypatch):
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", block_cells)         # 7 -> one query per block
    rng = np.random.default_rng(seed)
    nq, ng, ids = int(rng.integers(1, 40)), int(rng.integers(1, 80)), int(rng.integers(1, 10))
    d = rng.integers(0, int(rng.integers(1, 6)), size=(nq, ng)).astype(np.float64)   # many exact ties
    q_pids, g_pids = rng.integers(0, ids + 2, nq), rng.integers(0, ids, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    max_rank = int(rng.integers(1, 25))
    try:
        want = ref_llcm(d, q_pids, g_pids, q_cams, g_cams, max_rank)
    except ValueError:
        with pytest.raises(ValueError):
            eval_llcm(d, q_pids, g_pids, q_cams, g_cams, max_rank)
        return
    got = eval_llcm(d, q_pids, g_pids, q_cams, g_cams, max_rank)
    np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-12)
    assert abs(got[1] - want[1]) <= 1e-12 and abs(got[2] - want[2]) <= 1e-12


# ---------------------------------------------------------------- bad input: one-line errors

def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_idx_file(broken):
    os.remove(os.path.join(broken, "idx", "train_nir.txt"))
    with pytest.raises(DataError) as err:
        datasets.load_train("llcm", broken)
    assert "idx/train_nir.txt" in one_line(err) and "missing LLCM index file" in str(err.value)


def test_list_line_naming_a_missing_image(broken):
    lines = Path(broken, "idx", "train_vis.txt").read_text().splitlines()
    victim = lines[3].split(" ")[0]
    os.remove(os.path.join(broken, victim))
    with pytest.raises(DataError) as err:
        datasets.load_train("llcm", broken)
    assert re.search(r"1 of \d+ images listed in .*train_vis\.txt do not exist \(first: .*%s\)" % re.escape(victim),
                     one_line(err))


def test_label_differs_between_the_lists(broken, synth):
    path = Path(broken, "idx", "train_nir.txt")
    lines = path.read_text().splitlines()
    rel, label = lines[0].split(" ")
    folder = os.path.basename(os.path.dirname(rel))
    other = (int(label) + 1) % len(synth[1]["split"]["train"])
    path.write_text("\n".join(f"{r} {other}" if os.path.basename(os.path.dirname(r)) == folder else f"{r} {lab}"
                              for r, lab in (x.split(" ") for x in lines)) + "\n")
    with pytest.raises(DataError) as err:
        datasets.load_train("llcm", broken)
    msg = one_line(err)
    assert f"person folder {folder} has" in msg and "train_vis.txt" in msg and "train_nir.txt" in msg
    assert f"{label} in idx/train_vis.txt" in msg and f"{other} in idx/train_nir.txt" in msg


def test_two_folders_sharing_a_label_and_bad_names(broken):
    for name in ("train_vis.txt", "train_nir.txt"):   # label 1's person gets label 0 in both lists
        listed = Path(broken, "idx", name)
        listed.write_text("\n".join(x.rsplit(" ", 1)[0] + " 0" if x.endswith(" 1") else x
                                    for x in listed.read_text().splitlines()) + "\n")
    with pytest.raises(DataError, match=r"label 0 has \d+ in idx/train_.*\.txt and \d+ in .*two person folders"):
        datasets.load_train("llcm", broken)
    path = Path(broken, "idx", "train_vis.txt")
    lines = path.read_text().splitlines()
    rel = lines[0].split(" ")[0]
    renamed = os.path.join(os.path.dirname(rel), "nocamera.jpg")
    os.rename(os.path.join(broken, rel), os.path.join(broken, renamed))
    path.write_text("\n".join([f"{renamed} 0"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="cannot read the camera of .*nocamera.jpg"):
        datasets.load_train("llcm", broken)


def test_test_id_without_folder_and_missing_root(broken, tmp_path):
    Path(broken, "idx", "test_id.txt").write_text(Path(broken, "idx", "test_id.txt").read_text().strip() + ",9999\n")
    with pytest.raises(DataError, match=r"id 9999 listed in .*test_id.txt has no folder"):
        datasets.load_protocols("llcm", broken)
    with pytest.raises(DataError, match="does not exist"):
        datasets.check_root("llcm", str(tmp_path / "nothing"))
    shutil.rmtree(os.path.join(broken, "test_nir"))
    with pytest.raises(DataError, match="test_nir is missing"):
        datasets.check_root("llcm", broken)


def test_inspect_dataset_llcm(synth, broken, capsys):
    script = entry_main("scripts/inspect_dataset.py")
    proc = run_main(script, ["--dataset", "llcm", "--data-dir", synth[0], "--json"], capsys)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["train_ids"] == 10 and report["test_ids"] == 5
    assert report["differences"]["train_ids"] == {"found": 10, "real": 713}
    assert set(report["differences"]) == {"train_rgb_images", "train_ir_images", "train_ids", "test_ids"}
    assert dict(SPECS["llcm"].real_counts) == {"train_rgb_images": 16946, "train_ir_images": 13975,
                                               "train_ids": 713, "test_ids": 351}
    os.remove(os.path.join(broken, "idx", "train_vis.txt"))
    proc = run_main(script, ["--dataset", "llcm", "--data-dir", broken], capsys)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "train_vis.txt" in lines[0]


# ---------------------------------------------------------------- one list of datasets, no name branches


# ---------------------------------------------------------------- evaluation wiring and test.py

def test_score_protocols_plain_and_reranked(hand):
    """utils.evaluation.protocols: each split's metrics are eval_llcm of -<q, g>, and with re-ranking eval_llcm of
    the re-ranked distance, from the same features."""
    from clustering.rerank import RerankParams, rerank_distance
    from data.sample import cams_of, pids_of
    from utils.evaluation.protocols import score_protocols

    protocols = datasets.load_protocols("llcm", hand, gallery_trials=3)
    paths = {s.path for sps in protocols.values() for sp in sps for s in sp.query + sp.gallery}
    feats = {p: torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(i)), dim=0)
             for i, p in enumerate(sorted(paths))}
    params = RerankParams(3, 2, 0.3)
    plain = score_protocols("llcm", protocols, feats)
    reranked = score_protocols("llcm", protocols, feats, rerank=params)
    for name, splits in protocols.items():
        for sp in splits:
            q = torch.stack([feats[s.path] for s in sp.query])
            g = torch.stack([feats[s.path] for s in sp.gallery])
            ids = (pids_of(sp.query), pids_of(sp.gallery), cams_of(sp.query), cams_of(sp.gallery))
            for res, dist in ((plain, -(q.double() @ g.double().T).numpy()), (reranked, rerank_distance(q, g, params))):
                cmc, mAP, _ = eval_llcm(dist, *ids)
                got = res[name]["splits"][sp.name]
                assert got["r1"] == pytest.approx(100 * cmc[0]) and got["mAP"] == pytest.approx(100 * mAP)
        assert plain[name]["mean"]["mAP"] == pytest.approx(np.mean([m["mAP"] for m in plain[name]["splits"].values()]))


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """An untrained resnet18 'trained' at 32x16 on LLCM, saved after its first epoch: once in the current
    checkpoint format and once in version 1 (which stored the 0-based epoch index)."""
    from model import build_model
    from utils.checkpoint import VERSION, atomic_torch_save, make_checkpoint

    base = tmp_path_factory.mktemp("ckpt")
    model = build_model(arch="resnet18", num_classes=5, pretrained="none")
    args = {"img_h": 32, "img_w": 16, "arch": "resnet18"}
    new = make_checkpoint(model, stage="mmm", phase="train", dataset="llcm", trial=None, epoch=1, args=args)
    old = dict(new, version=1, epoch=0)
    assert VERSION >= 2
    paths = {"new": str(base / "new.pth"), "old": str(base / "old.pth")}
    atomic_torch_save(new, paths["new"])
    atomic_torch_save(old, paths["old"])
    return paths


def _testpy(argv, capsys):
    sys.path.insert(0, str(ROOT))
    import test as testpy

    testpy.main(["--device", "cpu", "--workers", "0", *argv])
    return capsys.readouterr()


@pytest.mark.parametrize("which", ["new", "old"])
def test_testpy_reports_one_based_epoch(synth, tiny_ckpts, tmp_path, capsys, which):
    """A checkpoint written after the first epoch is reported as epoch 1 (printout and JSON), whatever
    the checkpoint format stores."""
    out = tmp_path / "r.json"
    printed = _testpy(["--dataset", "llcm", "--data-dir", synth[0], "--resume-net1", tiny_ckpts[which],
                       "--gallery-trials", "2", "--out", str(out)], capsys)
    assert "(stage mmm, epoch 1)" in printed.out
    record = json.loads(out.read_text())
    assert record["epoch"] == 1 and "results_rerank" not in record and "rerank" not in record
    assert sorted(record["results"]) == ["infrared2visible", "visible2infrared"]   # the JSON sorts keys
    assert record["gallery_trials"] == 2


def test_testpy_rerank_reported_separately(synth, tiny_ckpts, tmp_path, capsys):
    out = tmp_path / "r.json"
    common = ["--dataset", "llcm", "--data-dir", synth[0], "--resume-net1", tiny_ckpts["new"], "--gallery-trials", "2",
              "--direction", "visible2infrared"]
    printed = _testpy(common + ["--out", str(out), "--rerank", "--rerank-k1", "6", "--rerank-lambda", "0.5"], capsys)
    record = json.loads(out.read_text())
    assert record["rerank"] == {"k1": 6, "k2": 6, "lambda": 0.5}
    assert list(record["results"]) == list(record["results_rerank"]) == ["visible2infrared"]
    plain_only = tmp_path / "p.json"
    _testpy(common + ["--out", str(plain_only)], capsys)
    assert json.loads(plain_only.read_text())["results"] == record["results"]     # never replaced
    assert record["results_rerank"]["visible2infrared"]["splits"] != record["results"]["visible2infrared"]["splits"]
    lines = printed.out.splitlines()
    assert any(x.startswith("[re-ranked k1=6 k2=6 lambda=0.5] visible2infrared MEAN:") for x in lines)
    assert any(x.startswith("visible2infrared MEAN:") for x in lines)


@pytest.mark.parametrize("extra, fragment, at_parse", [
    (["--mode", "indoor"], "--mode indoor is not a LLCM search mode", False),
    (["--rerank-k2", "3"], "--rerank-k2 needs --rerank", True),
    (["--rerank", "--rerank-lambda", "2"], "--rerank-lambda must be between 0 and 1", True),
    (["--shot", "10"], "--shot", False),
    (["--trial", "all"], "--trial all", True),
])
def test_testpy_refusals(synth, tiny_ckpts, extra, fragment, at_parse, capsys):
    """Exit 2 without a traceback: flag combinations at parse time (argparse's usage, then its one error
    line), what only the data can tell as one ``error:`` line."""
    proc = run_main(entry_main("test.py"), ["--dataset", "llcm", "--data-dir", synth[0], "--resume-net1",
                    tiny_ckpts["new"], "--device", "cpu", *extra], capsys)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    if at_parse:  # in this process argparse names the program after pytest's argv[0], not test.py
        assert lines[0].startswith("usage: ") and sum("error" in x for x in lines) == 1, proc.stderr
        lines = [lines[-1].split(": ", 1)[1]] if ": error: " in lines[-1] else lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
