"""scripts/inspect_dataset.py and scripts/prepare_data.py on fixture trees, through their entry points: one
run in a fresh interpreter from another directory (the script finds its package), the others in-process."""
import importlib.util
import json
import os

import numpy as np
import pytest
from test_data_readers import (REGDB_IMAGES, REGDB_TRIALS, SYSU_LAYOUT, SYSU_TEST, SYSU_TRAIN, SYSU_VAL,
                               make_regdb, make_sysu)

from utils.cli import run_cli

from e2e_harness import run, run_main

RGB_CAMS, IR_CAMS = (1, 2, 4, 5), (3, 6)


def run_script(repo_root, name, *args, capsys=None):
    """Run scripts/<name>: with ``capsys`` its main() in-process (run_cli), else in a fresh interpreter from
    another directory; return the CompletedProcess."""
    if capsys is not None:
        return run_main(load_script(repo_root, name).main, args, capsys)
    return run(os.path.join(repo_root, "scripts", name), *args, cwd="/", timeout=120)


def load_script(repo_root, name):
    """Import scripts/<name> as a module (to call its main() in-process)."""
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(repo_root, "scripts", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def n_images(ids, cams):
    return sum(SYSU_LAYOUT[p].get(c, 0) for p in ids for c in cams)


def n_nonempty(ids, cams):
    return sum(1 for p in ids for c in cams if SYSU_LAYOUT[p].get(c, 0) > 0)


def expect_error(proc, *words):
    """Exit status 2, a one-line error naming ``words`` and no traceback."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for w in words:
        assert w in lines[0]


@pytest.mark.slow
def test_inspect_sysu_json(tmp_path, repo_root):
    root = make_sysu(tmp_path / "SYSU-MM01")
    proc = run_script(repo_root, "inspect_dataset.py", "--dataset", "sysu", "--data-dir", root, "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object
    train_ids = SYSU_TRAIN + SYSU_VAL
    expected = {"train_rgb_images": n_images(train_ids, RGB_CAMS), "train_ir_images": n_images(train_ids, IR_CAMS),
                "train_ids": len(train_ids), "query_images": n_images(SYSU_TEST, IR_CAMS),
                "gallery_images_all": n_nonempty(SYSU_TEST, RGB_CAMS),
                "gallery_images_indoor": n_nonempty(SYSU_TEST, (1, 2)), "test_ids": len(SYSU_TEST)}
    assert {k: report[k] for k in expected} == expected
    assert expected["gallery_images_all"] == 8 and expected["query_images"] == 12  # hand count
    assert report["matches_real_dataset"] is False
    assert report["differences"]["train_rgb_images"] == {"found": expected["train_rgb_images"], "real": 22258}
    assert set(report["differences"]) == {"train_rgb_images", "train_ir_images", "train_ids", "query_images",
                                          "gallery_images_all", "gallery_images_indoor"}


def test_inspect_regdb_json_and_human(tmp_path, repo_root, capsys):
    root = make_regdb(tmp_path / "RegDB")
    proc = run_script(repo_root, "inspect_dataset.py", "--dataset", "regdb", "--data-dir", root,
                      "--trial", 2, "--json", capsys=capsys)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    n_train, n_test = (len(p) * REGDB_IMAGES for p in REGDB_TRIALS[2])
    assert {k: report[k] for k in ("train_rgb_images", "train_ir_images", "test_rgb_images", "test_ir_images",
                                   "train_ids", "test_ids")} == {
        "train_rgb_images": n_train, "train_ir_images": n_train, "test_rgb_images": n_test,
        "test_ir_images": n_test, "train_ids": 3, "test_ids": 3}
    assert report["trial"] == 2 and report["differences"]["test_ids"] == {"found": 3, "real": 206}
    human = run_script(repo_root, "inspect_dataset.py", "--dataset", "regdb", "--data-dir", root, capsys=capsys)
    assert human.returncode == 0 and "differs from the real RegDB counts" in human.stdout
    assert "train_rgb_images: found 9, real 2060" in human.stdout


def test_inspect_reports_a_real_sized_match(repo_root, monkeypatch, capsys, tmp_path):
    module = load_script(repo_root, "inspect_dataset.py")
    root = make_regdb(tmp_path / "RegDB")
    monkeypatch.setitem(module.REAL_COUNTS, "regdb", {"train_rgb_images": 9, "train_ir_images": 9,
                                                      "test_rgb_images": 9, "test_ir_images": 9,
                                                      "train_ids": 3, "test_ids": 3})
    module.main(["--dataset", "regdb", "--data-dir", root])
    assert "matches the real RegDB counts" in capsys.readouterr().out


@pytest.mark.parametrize("trial", ["0", "11"])
def test_inspect_bad_trial(tmp_path, repo_root, trial, capsys):
    root = make_regdb(tmp_path / "RegDB")
    proc = run_script(repo_root, "inspect_dataset.py", "--dataset", "regdb", "--data-dir", root, "--trial", trial,
                      capsys=capsys)
    expect_error(proc, "--trial")


def test_inspect_broken_layouts(tmp_path, repo_root, capsys):
    root = make_sysu(tmp_path / "SYSU-MM01")
    expect_error(run_script(repo_root, "inspect_dataset.py", "--dataset", "sysu", "--data-dir", tmp_path / "x",
                            capsys=capsys), "does not exist")
    with open(os.path.join(root, "exp", "test_id.txt"), "w") as f:
        f.write("3,6,7,10")
    expect_error(run_script(repo_root, "inspect_dataset.py", "--dataset", "sysu", "--data-dir", root, "--json",
                            capsys=capsys), "id 0010 listed in exp/test_id.txt has no folder")
    os.remove(os.path.join(root, "exp", "test_id.txt"))
    expect_error(run_script(repo_root, "inspect_dataset.py", "--dataset", "sysu", "--data-dir", root, capsys=capsys),
                 "test_id.txt")
    regdb_root = make_regdb(tmp_path / "RegDB")
    expect_error(run_script(repo_root, "inspect_dataset.py", "--dataset", "regdb", "--data-dir", regdb_root,
                            "--trial", 3, capsys=capsys), "train_visible_3.txt")


def test_inspect_check_images(tmp_path, repo_root, capsys):
    root = make_sysu(tmp_path / "SYSU-MM01")
    module = load_script(repo_root, "inspect_dataset.py")
    assert run_cli(module.main, ["--dataset", "sysu", "--data-dir", root, "--check-images", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unreadable_images"] == []
    # every image of the listed ids (id 8 is in no split and is not read)
    assert report["checked_images"] == n_images(SYSU_TRAIN + SYSU_VAL + SYSU_TEST, RGB_CAMS + IR_CAMS) == 76
    zero = os.path.join(root, "cam2", "0006", "0003.jpg")  # a gallery candidate of test id 6
    garbage = os.path.join(root, "cam3", "0001", "0001.jpg")
    open(zero, "wb").close()
    with open(garbage, "wb") as f:
        f.write(b"\xff\xd8 garbage")
    bad = run_script(repo_root, "inspect_dataset.py", "--dataset", "sysu", "--data-dir", root,
                     "--check-images", "--json", capsys=capsys)
    expect_error(bad, "2 of 76 images cannot be read", garbage)  # training images are checked first
    report = json.loads(bad.stdout)
    assert sorted(report["unreadable_images"]) == sorted([zero, garbage])


def test_prepare_data_writes_caches(tmp_path, repo_root, capsys):
    module = load_script(repo_root, "prepare_data.py")
    root = make_regdb(tmp_path / "RegDB")
    module.main(["--dataset", "regdb", "--data-dir", root, "--img-h", "16", "--img-w", "8"])
    out = capsys.readouterr().out
    assert "36 images" in out and out.count("wrote ") == 2
    from data.images import ImageCache, load_image, resize_uint8
    from data.regdb import regdb_split
    cache = ImageCache.open(os.path.join(root, "mmm_cache"), root, 16, 8, "lanczos")
    for s in sum(regdb_split(root, 2, "test"), []):
        assert np.array_equal(cache.get(s.path), resize_uint8(load_image(s.path), 16, 8, "lanczos"))
    assert run_cli(module.main, ["--dataset", "regdb", "--data-dir", root, "--trial", "11"]) == 2
    assert "--trial" in capsys.readouterr().err
