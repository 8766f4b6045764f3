"""Tests of the synthetic SYSU-MM01 / RegDB generator: layout, counts, determinism, learnability."""
import colorsys
import dataclasses
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from data.sample import DataError
from data.synthetic import (IR_CAMS, RGB_CAMS, generate_regdb, generate_sysu, make_camera, make_identity,
                            make_pose, render)
from utils.cli import run_cli

from e2e_harness import entry_main, run_main

H, W = 64, 32


@pytest.fixture(scope="module")
def sysu(tmp_path_factory):
    """A small SYSU tree and its manifest."""
    root = str(tmp_path_factory.mktemp("sysu"))
    return root, generate_sysu(root, ids=14, seed=5, height=H, width=W, images_per_cam=(2, 4))


@pytest.fixture(scope="module")
def regdb(tmp_path_factory):
    """A small RegDB tree and its manifest."""
    root = str(tmp_path_factory.mktemp("regdb"))
    return root, generate_regdb(root, ids=11, seed=5, height=H, width=W, images_per_id=3)


def read_ids(root, name):
    """Ids of an exp/ list, read the way the official loaders read them."""
    with open(os.path.join(root, "exp", f"{name}_id.txt")) as f:
        return [int(y) for y in f.read().splitlines()[0].split(",")]


def sysu_files(root, pids, cams):
    """{(pid, cam): sorted file names} for the given ids and cameras, from disk."""
    out = {}
    for pid in pids:
        for c in cams:
            folder = os.path.join(root, f"cam{c}", "%04d" % pid)
            if os.path.isdir(folder):
                out[(pid, c)] = sorted(os.listdir(folder))
    return out


def read_idx(root, name):
    """[(relative path, label)] of one idx file."""
    with open(os.path.join(root, "idx", name)) as f:
        return [(s.split(" ")[0], int(s.split(" ")[1])) for s in f.read().splitlines()]


def test_sysu_layout(sysu):
    root, manifest = sysu
    assert sorted(os.listdir(root)) == ["cam1", "cam2", "cam3", "cam4", "cam5", "cam6", "exp",
                                        "synthetic_manifest.json"]
    for name in ("train", "val", "test", "available"):
        text = open(os.path.join(root, "exp", f"{name}_id.txt")).read()
        assert re.fullmatch(r"[1-9]\d*(,[1-9]\d*)*\n", text), text   # one line, unpadded ints
    train, val, test = read_ids(root, "train"), read_ids(root, "val"), read_ids(root, "test")
    assert len(train) >= 2 and len(val) >= 1 and len(test) >= 2
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert sorted(train + val + test) == read_ids(root, "available")
    assert max(train + val + test) > len(train + val + test)          # ids are not 1..N
    on_disk = {int(d) for c in range(1, 7) for d in os.listdir(os.path.join(root, f"cam{c}"))}
    extra = on_disk - set(train + val + test)
    assert len(extra) >= 2 and sorted(extra) == manifest["extra_ids"]
    for c in range(1, 7):
        for d in os.listdir(os.path.join(root, f"cam{c}")):
            assert re.fullmatch(r"\d{4}", d)
            names = sorted(os.listdir(os.path.join(root, f"cam{c}", d)))
            assert names == ["%04d.jpg" % n for n in range(1, len(names) + 1)]
            path = os.path.join(root, f"cam{c}", d, names[0])
            assert int(path[-15]) == c and path[-13:-9] == d    # the official fixed-position parsing
    for pid in train + val + test:
        cams = {c for (_, c) in sysu_files(root, [pid], range(1, 7))}
        assert cams & set(RGB_CAMS) and cams & set(IR_CAMS) and len(cams) >= 2
    test_cams = [{c for (_, c) in sysu_files(root, [pid], RGB_CAMS)} for pid in test]
    assert any(not {4, 5} <= cams for cams in test_cams)               # gallery sizes vary


def test_sysu_images(sysu):
    root, _ = sysu
    files = sysu_files(root, read_ids(root, "test"), range(1, 7))
    for (pid, c), names in list(files.items())[:12]:
        img = np.asarray(Image.open(os.path.join(root, f"cam{c}", "%04d" % pid, names[0])))
        assert img.shape == (H, W, 3) and img.dtype == np.uint8
        spread = np.abs(img.astype(int) - img.mean(axis=2, keepdims=True)).mean()
        if c in IR_CAMS:
            assert np.abs(img[..., 0].astype(int) - img[..., 2]).max() <= 12 and spread < 1.5
        else:
            assert spread > 3.0                                         # visible images carry colour


def test_sysu_manifest_counts(sysu):
    root, manifest = sysu
    train = read_ids(root, "train") + read_ids(root, "val")
    test = read_ids(root, "test")
    rgb, ir = sysu_files(root, train, RGB_CAMS), sysu_files(root, train, IR_CAMS)
    query, gallery = sysu_files(root, test, IR_CAMS), sysu_files(root, test, RGB_CAMS)
    expected = {"train_rgb_images": sum(map(len, rgb.values())), "train_ir_images": sum(map(len, ir.values())),
                "train_ids": len(train), "test_ids": len(test), "query_images": sum(map(len, query.values())),
                "gallery_images_all": len(gallery),
                "gallery_images_indoor": sum(1 for (_, c) in gallery if c in (1, 2))}
    counts = manifest["counts"]
    assert {k: counts[k] for k in expected} == expected
    assert json.load(open(os.path.join(root, "synthetic_manifest.json"))) == manifest
    assert manifest["layout"] == "sysu" and manifest["image_size"] == {"height": H, "width": W}


def test_regdb_layout(regdb):
    root, manifest = regdb
    assert sorted(os.listdir(root)) == ["Thermal", "Visible", "idx", "synthetic_manifest.json"]
    assert sorted(os.listdir(os.path.join(root, "Visible")), key=int) == [str(p) for p in range(1, 12)]
    for folder, tag in (("Visible", "v"), ("Thermal", "t")):
        for pid in os.listdir(os.path.join(root, folder)):
            names = os.listdir(os.path.join(root, folder, pid))
            assert len(names) == 3
            for name in names:
                assert re.fullmatch(rf"(male|female)_(front|back)_{tag}_\d{{5}}_{pid}\.bmp", name), name
    path = os.path.join(root, "Thermal", "1", os.listdir(os.path.join(root, "Thermal", "1"))[0])
    with open(path, "rb") as f:
        header = f.read(30)
    assert header[:2] == b"BM" and int.from_bytes(header[28:30], "little") == 24   # 24-bit BMP
    img = np.asarray(Image.open(path))
    assert img.shape == (H, W, 3) and np.abs(img[..., 0].astype(int) - img[..., 1]).max() <= 4
    assert sorted(os.listdir(os.path.join(root, "idx"))) == sorted(
        f"{p}_{m}_{t}.txt" for p in ("train", "test") for m in ("visible", "thermal") for t in range(1, 11))


def test_regdb_idx_files(regdb):
    root, _ = regdb
    shuffled = False
    for t in range(1, 11):
        people = {}
        for part in ("train", "test"):
            vis, th = read_idx(root, f"{part}_visible_{t}.txt"), read_idx(root, f"{part}_thermal_{t}.txt")
            raw = open(os.path.join(root, "idx", f"{part}_visible_{t}.txt")).read().splitlines()
            assert all(re.fullmatch(r"Visible/\d+/\S+\.bmp \d+", s) for s in raw)
            labels = [lab for _, lab in vis]
            assert labels[0] == 0 and all(b - a in (0, 1) for a, b in zip(labels, labels[1:]))
            pid_of = {lab: int(p.split("/")[1]) for p, lab in vis}
            assert {lab: int(p.split("/")[1]) for p, lab in th} == pid_of      # same person -> label map
            assert all(p.startswith("Thermal/") and "_t_" in p for p, _ in th)
            assert all(os.path.isfile(os.path.join(root, p)) for p, _ in vis + th)
            order = [pid_of[lab] for lab in range(len(pid_of))]
            shuffled |= order != sorted(order)
            people[part] = set(order)
        assert not people["train"] & people["test"] and people["train"] | people["test"] == set(range(1, 12))
    assert shuffled


def test_regdb_manifest_counts(regdb):
    root, manifest = regdb
    for t in range(1, 11):
        got = {}
        for part in ("train", "test"):
            for modality, key in (("visible", "rgb"), ("thermal", "ir")):
                lines = read_idx(root, f"{part}_{modality}_{t}.txt")
                got[f"{part}_{key}_images"] = len(lines)
                got[f"{part}_ids"] = len({lab for _, lab in lines})
        assert manifest["counts"]["trials"][str(t)] == got


def _tree(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            with open(os.path.join(d, n), "rb") as f:
                out[os.path.relpath(os.path.join(d, n), root)] = f.read()
    return out


@pytest.mark.parametrize("layout", ["sysu", "regdb"])
def test_determinism(tmp_path, layout):
    gen = {"sysu": lambda r, s: generate_sysu(r, 6, s, H, W, (1, 2)),
           "regdb": lambda r, s: generate_regdb(r, 4, s, H, W, 2)}[layout]
    trees, manifests = [], []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        manifests.append(gen(str(tmp_path / name), seed))
        trees.append(_tree(str(tmp_path / name)))
    assert trees[0] == trees[1] and manifests[0] == manifests[1]
    assert manifests[0] != manifests[2]
    images = [{v for k, v in tree.items() if k.endswith((".jpg", ".bmp"))} for tree in trees]
    assert not images[0] & images[2]                                   # no image is shared


def test_refuses_non_empty_dir(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="--force"):
        generate_sysu(str(tmp_path), 6, 0, H, W, (1, 1))
    from scripts.make_synthetic import main
    assert run_cli(main, ["--layout", "regdb", "--out", str(tmp_path), "--ids", "4", "--seed", "0"]) == 2
    assert "error:" in capsys.readouterr().err
    stale = tmp_path / "cam1" / "9999"
    stale.mkdir(parents=True)
    generate_sysu(str(tmp_path), 6, 0, H, W, (1, 1), force=True)
    assert not stale.exists() and (tmp_path / "notes.txt").read_text() == "keep me"


def test_bad_arguments(tmp_path):
    with pytest.raises(DataError):
        generate_sysu(str(tmp_path / "a"), 4, 0, H, W)
    with pytest.raises(DataError):
        generate_regdb(str(tmp_path / "b"), 6, -1, H, W)
    with pytest.raises(DataError):
        generate_regdb(str(tmp_path / "c"), 6, 0, 16, 8)


def test_cli_both(tmp_path, repo_root, capsys):
    out = tmp_path / "both"
    cmd = ["--layout", "both",
           "--out", str(out), "--ids", "6", "--seed", "1", "--img-h", "64", "--img-w", "32",
           "--images-per-cam", "1", "2", "--images-per-id", "2"]
    res = run_main(entry_main("scripts/make_synthetic.py"), cmd, capsys)
    assert res.returncode == 0, res.stderr
    assert "query_images=" in res.stdout and "test_rgb_images=" in res.stdout
    assert os.path.isfile(out / "sysu" / "exp" / "test_id.txt")
    assert os.path.isfile(out / "regdb" / "idx" / "test_thermal_10.txt")
    res = run_main(entry_main("scripts/make_synthetic.py"), cmd, capsys)
    assert res.returncode == 2 and res.stderr.startswith("error:")


def test_render_ir_is_warm_and_colourless():
    rng = np.random.default_rng(0)
    person, cam = make_identity(rng), make_camera(rng, ir=True, outdoor=False)
    pose = dataclasses.replace(make_pose(rng, 128, 64), occluder=None, dx=0.0)
    img = render(person, cam, pose, np.random.default_rng(1), 128, 64).astype(int)
    assert np.abs(img - img.mean(axis=2, keepdims=True)).max() <= 3     # channels nearly equal
    assert img[30:100, 28:36].mean() > img[:, :6].mean() + 40           # warm body on a dark background


def test_ir_intensity_is_not_grayscale():
    people = [make_identity(np.random.default_rng([9, i])) for i in range(400)]
    ir = np.array([p.ir["upper"] for p in people])
    hsv = np.array([colorsys.rgb_to_hsv(*p.rgb["upper"]) for p in people])
    gray = np.array([p.rgb["upper"] @ np.array([0.299, 0.587, 0.114]) for p in people])
    assert abs(np.corrcoef(ir, gray)[0, 1]) < 0.5 and abs(np.corrcoef(ir, hsv[:, 0])[0, 1]) < 0.2


def _feature(path):
    """Raw-pixel descriptor: 32x16 grayscale, standardised per image."""
    a = np.asarray(Image.open(path).convert("L").resize((16, 32), Image.BILINEAR), np.float32).ravel()
    return (a - a.mean()) / (a.std() + 1e-6)


def _rank1(q, qid, g, gid):
    d = ((q[:, None] - g[None]) ** 2).sum(-1)
    return float((gid[d.argmin(1)] == qid).mean())


@pytest.mark.parametrize("seed", [0, 1])
def test_raw_pixels_match_ir_to_rgb_above_chance(tmp_path, seed):
    root = str(tmp_path / "s")
    generate_sysu(root, 80, seed, H, W, (2, 3))
    test = read_ids(root, "test")
    sets = {}
    for name, cams in (("q", IR_CAMS), ("g", RGB_CAMS)):
        files = sysu_files(root, test, cams)
        paths = [(pid, os.path.join(root, f"cam{c}", "%04d" % pid, n)) for (pid, c), ns in files.items() for n in ns]
        sets[name] = (np.stack([_feature(p) for _, p in paths]), np.array([pid for pid, _ in paths]))
    r1, chance = _rank1(*sets["q"], *sets["g"]), 1 / len(test)
    # learnable from shape/pattern cues, but far from solved by raw pixels
    assert 3 * chance <= r1 < 0.6, (r1, chance)


def test_raw_pixels_regdb_thermal_to_visible(tmp_path):
    root = str(tmp_path / "r")
    generate_regdb(root, 24, 2, H, W, 4)
    q = read_idx(root, "test_thermal_1.txt")
    g = read_idx(root, "test_visible_1.txt")
    feats = [(np.stack([_feature(os.path.join(root, p)) for p, _ in s]), np.array([lab for _, lab in s]))
             for s in (q, g)]
    r1, chance = _rank1(*feats[0], *feats[1]), 1 / 12
    assert 3 * chance <= r1 < 0.95, (r1, chance)
