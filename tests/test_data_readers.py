"""SYSU-MM01 / RegDB readers and the test protocol, on tiny fixture trees with known contents.

The fixture builders here are also used by test_images.py and test_inspect_dataset.py.
"""
import os
import random

import numpy as np
import pytest
from PIL import Image

from data import datasets, regdb, sysu
from data.sample import IR, RGB, DataError

# id -> {camera: number of images}; 0 = an empty folder. ids 3, 6, 7 are the test ids and 8 is in
# no list (the real camera folders hold such ids too). id 5 has .png files, id 3 cam1 has 12 images
# (more than the 10 of multi-shot), id 7 has an empty cam2 folder.
SYSU_LAYOUT = {
    1: {1: 3, 2: 2, 3: 2, 6: 1},
    2: {4: 2, 5: 1, 3: 3},
    4: {1: 1, 5: 2, 6: 2},
    5: {2: 2, 3: 1},
    3: {1: 12, 2: 4, 4: 3, 3: 4, 6: 2},
    6: {2: 5, 5: 6, 3: 3},
    7: {1: 4, 2: 0, 4: 5, 5: 3, 6: 3},
    8: {1: 2, 3: 2},
}
SYSU_TRAIN, SYSU_VAL, SYSU_TEST = (1, 2, 4), (5,), (3, 6, 7)


def _write_image(path, h, w, seed, gray=False, fmt=None):
    """A small noise image (so resizing and caching have real content to get wrong)."""
    arr = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if gray else arr)
    img.save(path, format=fmt)


def sysu_names(pid, cam):
    """File names the builder writes for (pid, cam), in sorted order."""
    ext = ".png" if pid == 5 else ".jpg"
    return [f"{k:04d}{ext}" for k in range(1, SYSU_LAYOUT[pid].get(cam, 0) + 1)]


def make_sysu(root):
    """Write the SYSU-like tree of SYSU_LAYOUT under ``root``; return ``root`` as str."""
    root = str(root)
    for c in range(1, 7):
        os.makedirs(os.path.join(root, f"cam{c}"), exist_ok=True)
    for pid, cams in SYSU_LAYOUT.items():
        for cam, n in cams.items():
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            os.makedirs(folder)
            for k, name in reversed(list(enumerate(sysu_names(pid, cam)))):  # creation order != sorted
                _write_image(os.path.join(folder, name), 20 + k, 10 + cam, seed=pid * 100 + cam * 10 + k,
                             gray=cam in (3, 6))
    with open(os.path.join(root, "cam1", "0001", "Thumbs.db"), "w") as f:
        f.write("not an image")  # must be ignored by the listing
    os.makedirs(os.path.join(root, "exp"))
    for name, ids in (("train_id.txt", SYSU_TRAIN), ("val_id.txt", SYSU_VAL), ("test_id.txt", SYSU_TEST)):
        with open(os.path.join(root, "exp", name), "w") as f:
            f.write(",".join(str(i) for i in ids) + "\n")
    return root


def expected_sysu(root, ids, cams):
    """(path, pid, cam) in protocol order, computed from SYSU_LAYOUT rather than from the disk."""
    out = []
    for pid in sorted(ids, key=lambda p: "%04d" % p):
        for cam in cams:
            out += [(os.path.join(root, f"cam{cam}", f"{pid:04d}", n), pid, cam) for n in sysu_names(pid, cam)]
    return out


# RegDB: 6 persons x 3 images per modality; trial t -> (train persons, test persons) in idx order.
REGDB_TRIALS = {1: ((4, 1, 6), (2, 5, 3)), 2: ((2, 3, 5), (1, 4, 6))}
REGDB_IMAGES = 3


def regdb_rel(kind, person, k):
    """Relative path of image ``k`` of ``person`` (kind "Visible" or "Thermal")."""
    letter = "v" if kind == "Visible" else "t"
    return f"{kind}/{person}/male_front_{letter}_{person * 10 + k:05d}_{person}.bmp"


def make_regdb(root):
    """Write the RegDB-like tree (Visible/, Thermal/, idx for trials 1 and 2); return ``root``."""
    root = str(root)
    for kind in ("Visible", "Thermal"):
        for person in range(1, 7):
            os.makedirs(os.path.join(root, kind, str(person)))
            for k in range(REGDB_IMAGES):
                _write_image(os.path.join(root, regdb_rel(kind, person, k)), 24, 12, seed=person * 7 + k,
                             fmt="BMP")
    os.makedirs(os.path.join(root, "idx"))
    for trial, splits in REGDB_TRIALS.items():
        for split, persons in zip(("train", "test"), splits):
            for kind, word in (("Visible", "visible"), ("Thermal", "thermal")):
                lines = [f"{regdb_rel(kind, p, k)} {label}" for label, p in enumerate(persons)
                         for k in range(REGDB_IMAGES)]
                # one file with Windows line ends and blank trailing lines, as found in the wild
                end, tail = ("\r\n", "\r\n\r\n") if (trial, split, word) == (1, "test", "thermal") else ("\n", "")
                with open(os.path.join(root, "idx", f"{split}_{word}_{trial}.txt"), "w", newline="") as f:
                    f.write(end.join(lines) + tail)
    return root


def expected_regdb(root, kind, persons):
    """(path, label) in idx order for ``persons``."""
    return [(os.path.join(root, regdb_rel(kind, p, k)), label) for label, p in enumerate(persons)
            for k in range(REGDB_IMAGES)]


@pytest.fixture
def sysu_root(tmp_path):
    return make_sysu(tmp_path / "SYSU-MM01")


@pytest.fixture
def regdb_root(tmp_path):
    return make_regdb(tmp_path / "RegDB")


def triples(samples):
    return [(s.path, s.pid, s.cam) for s in samples]


# ---------------------------------------------------------------- SYSU readers

def test_read_ids_tolerates_whitespace_and_trailing_comma(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text(" 3,12 , 533,\n\n")
    assert sysu.read_ids(str(p)) == [3, 12, 533]


@pytest.mark.parametrize("text, words", [("", "empty"), ("\n1,2", "empty"), ("1,x,3", "'x'")])
def test_read_ids_rejects_bad_files(tmp_path, text, words):
    p = tmp_path / "ids.txt"
    p.write_text(text)
    with pytest.raises(DataError, match=words):
        sysu.read_ids(str(p))
    with pytest.raises(DataError, match="missing split file"):
        sysu.read_ids(str(tmp_path / "nope.txt"))


def test_sysu_train_order_cams_modality_and_train_val_union(sysu_root):
    rgb, ir = sysu.sysu_train(sysu_root)
    ids = SYSU_TRAIN + SYSU_VAL
    assert triples(rgb) == expected_sysu(sysu_root, ids, (1, 2, 4, 5))
    assert triples(ir) == expected_sysu(sysu_root, ids, (3, 6))
    assert {s.modality for s in rgb} == {RGB} and {s.modality for s in ir} == {IR}
    assert len(rgb) == 3 + 2 + 2 + 1 + 1 + 2 + 2 and len(ir) == 2 + 1 + 3 + 2 + 1  # hand count
    assert 5 in {s.pid for s in rgb} and 5 in {s.pid for s in ir}  # the val id is included
    assert all(os.path.isabs(s.path) for s in rgb + ir)
    assert not any(s.path.endswith("Thumbs.db") for s in rgb)


def test_sysu_ids_sort_as_four_digit_strings(tmp_path):
    root = make_sysu(tmp_path / "s")
    with open(os.path.join(root, "exp", "train_id.txt"), "w") as f:
        f.write("4,2,1")  # unsorted in the file
    rgb, _ = sysu.sysu_train(root)
    assert [s.pid for s in rgb][0] == 1 and sorted({s.pid for s in rgb}) == [1, 2, 4, 5]
    assert triples(rgb) == expected_sysu(root, (1, 2, 4, 5), (1, 2, 4, 5))


def test_sysu_query_is_every_ir_image_of_the_test_ids(sysu_root):
    query = sysu.sysu_query(sysu_root)
    assert triples(query) == expected_sysu(sysu_root, SYSU_TEST, (3, 6))
    assert len(query) == 4 + 2 + 3 + 3
    assert sysu.sysu_test_ids(sysu_root) == [3, 6, 7]


def replay_released_gallery(root, mode, shot, trial):
    """The released protocol, literally: global random.seed, sorted folders, choice/sample."""
    cams = {"all": (1, 2, 4, 5), "indoor": (1, 2)}[mode]
    state = random.getstate()
    random.seed(trial)
    out = []
    for pid in sorted(SYSU_TEST):
        for cam in cams:
            folder = os.path.join(root, f"cam{cam}", f"{pid:04d}")
            files = [os.path.join(folder, n) for n in sysu_names(pid, cam)]
            if not files:
                continue
            out += [random.choice(files)] if shot == 1 else random.sample(files, min(shot, len(files)))
    random.setstate(state)
    return out


@pytest.mark.parametrize("mode", ["all", "indoor"])
@pytest.mark.parametrize("shot", [1, 10])
def test_sysu_gallery_replays_the_protocol(sysu_root, mode, shot):
    state = random.getstate()
    for trial in range(10):
        gallery = sysu.sysu_gallery(sysu_root, mode, shot, trial)
        assert [s.path for s in gallery] == replay_released_gallery(sysu_root, mode, shot, trial)
    assert random.getstate() == state  # the global generator is untouched


def test_sysu_gallery_sizes_cams_and_distinct_trials(sysu_root):
    # (id, cam) folders with images: id3 1,2,4 | id6 2,5 | id7 1,4,5 (its cam2 folder is empty)
    g = sysu.sysu_gallery(sysu_root, "all", 1, 0)
    assert [(s.pid, s.cam) for s in g] == [(3, 1), (3, 2), (3, 4), (6, 2), (6, 5), (7, 1), (7, 4), (7, 5)]
    assert {s.modality for s in g} == {RGB}
    assert [(s.pid, s.cam) for s in sysu.sysu_gallery(sysu_root, "indoor", 1, 0)] == [(3, 1), (3, 2), (6, 2), (7, 1)]
    multi = sysu.sysu_gallery(sysu_root, "all", 10, 0)
    assert len(multi) == 10 + 4 + 3 + 5 + 6 + 4 + 5 + 3  # min(10, n) per folder; id3 cam1 has 12
    assert len({s.path for s in multi}) == len(multi)
    galleries = {tuple(s.path for s in sysu.sysu_gallery(sysu_root, "all", 1, t)) for t in range(10)}
    assert len(galleries) == 10


def test_single_shot_choice_equals_sample_of_one():
    files = [f"{k:04d}.jpg" for k in range(1, 30)]
    for seed in range(50):
        for n in (1, 2, 5, 29):
            assert random.Random(seed).choice(files[:n]) == random.Random(seed).sample(files[:n], 1)[0]


def test_sysu_gallery_known_first_draws(sysu_root):
    # random.Random(0): the first index drawn from 12 files, then from 4 (id 3, cams 1 and 2)
    rng = random.Random(0)
    i1, i2 = rng.randrange(12), rng.randrange(4)
    g = sysu.sysu_gallery(sysu_root, "all", 1, 0)
    assert os.path.basename(g[0].path) == f"{i1 + 1:04d}.jpg"
    assert os.path.basename(g[1].path) == f"{i2 + 1:04d}.jpg"


# ---------------------------------------------------------------- SYSU errors

def test_sysu_missing_root_and_folders(tmp_path, sysu_root):
    with pytest.raises(DataError, match="does not exist"):
        sysu.sysu_train(str(tmp_path / "nothing"))
    os.rename(os.path.join(sysu_root, "cam5"), os.path.join(sysu_root, "cam5_moved"))
    with pytest.raises(DataError, match=r"cam5 is missing; expected cam1\.\.cam6 and exp/"):
        sysu.sysu_train(sysu_root)


def test_sysu_missing_exp_file(sysu_root):
    os.remove(os.path.join(sysu_root, "exp", "val_id.txt"))
    with pytest.raises(DataError, match="val_id.txt"):
        sysu.sysu_train(sysu_root)


def test_sysu_listed_id_without_folder(sysu_root):
    with open(os.path.join(sysu_root, "exp", "train_id.txt"), "w") as f:
        f.write("1,2,4,9")
    with pytest.raises(DataError, match=r"id 0009 listed in exp/train_id.txt has no folder under cam1\.\.cam6"):
        sysu.sysu_train(sysu_root)
    with open(os.path.join(sysu_root, "exp", "test_id.txt"), "w") as f:
        f.write("3,6,7,9")
    with pytest.raises(DataError, match="id 0009 listed in exp/test_id.txt"):
        sysu.sysu_query(sysu_root)


def test_sysu_training_id_without_ir(sysu_root):
    import shutil
    shutil.rmtree(os.path.join(sysu_root, "cam3", "0005"))  # id 5 keeps only cam2 (RGB)
    with pytest.raises(DataError, match=r"training id 0005 \(exp/val_id.txt\) has no IR image"):
        sysu.sysu_train(sysu_root)


# ---------------------------------------------------------------- RegDB

@pytest.mark.parametrize("trial", [1, 2])
@pytest.mark.parametrize("split", ["train", "test"])
def test_regdb_split_order_labels_cams(regdb_root, trial, split):
    rgb, ir = regdb.regdb_split(regdb_root, trial, split)
    persons = REGDB_TRIALS[trial][split == "test"]
    assert [(s.path, s.pid) for s in rgb] == expected_regdb(regdb_root, "Visible", persons)
    assert [(s.path, s.pid) for s in ir] == expected_regdb(regdb_root, "Thermal", persons)
    assert {(s.cam, s.modality) for s in rgb} == {(1, RGB)} and {(s.cam, s.modality) for s in ir} == {(2, IR)}


@pytest.mark.parametrize("trial", [0, 11, None, "x"])
def test_regdb_bad_trial(regdb_root, trial):
    with pytest.raises(DataError, match="--trial"):
        regdb.regdb_split(regdb_root, trial, "train")


def test_regdb_missing_idx_file_and_root(tmp_path, regdb_root):
    with pytest.raises(DataError, match="test_visible_3.txt"):
        regdb.regdb_split(regdb_root, 3, "test")
    with pytest.raises(DataError, match="does not exist"):
        regdb.regdb_split(str(tmp_path / "nothing"), 1, "test")


def test_regdb_missing_images_are_counted(regdb_root):
    os.remove(os.path.join(regdb_root, regdb_rel("Thermal", 2, 1)))
    os.remove(os.path.join(regdb_root, regdb_rel("Thermal", 5, 0)))
    with pytest.raises(DataError, match=r"2 of 9 images .* do not exist \(first: .*male_front_t_00021_2\.bmp\)"):
        regdb.regdb_split(regdb_root, 1, "test")


def test_regdb_malformed_line_names_file_and_line(regdb_root):
    path = os.path.join(regdb_root, "idx", "train_visible_2.txt")
    lines = open(path).read().splitlines()
    lines[4] = lines[4].split(" ")[0]  # label missing on line 5
    open(path, "w").write("\n".join(lines))
    with pytest.raises(DataError, match=r"train_visible_2\.txt:5: expected"):
        regdb.regdb_split(regdb_root, 2, "train")


# ---------------------------------------------------------------- datasets dispatch

def test_check_trial():
    assert datasets.check_trial("sysu", None) is None and datasets.check_trial("sysu", 42) is None
    assert datasets.check_trial("regdb", 3) == 3 and datasets.check_trial("regdb", "10") == 10
    for bad in (0, 11, None, True, 2.5):
        with pytest.raises(DataError, match="--trial"):
            datasets.check_trial("regdb", bad)
    with pytest.raises(DataError, match="--dataset"):
        datasets.check_trial("market", 1)


def test_load_train_matches_readers(sysu_root, regdb_root):
    assert datasets.load_train("sysu", sysu_root) == sysu.sysu_train(sysu_root)
    assert datasets.load_train("regdb", regdb_root, trial=2) == regdb.regdb_split(regdb_root, 2, "train")
    with pytest.raises(DataError, match="--trial"):
        datasets.load_train("regdb", regdb_root)


def test_load_test_splits_sysu(sysu_root):
    splits = datasets.load_test_splits("sysu", sysu_root, mode="indoor", shot=1, gallery_trials=3)
    assert [s.name for s in splits] == ["trial0", "trial1", "trial2"]
    assert all(s.query is splits[0].query for s in splits)
    assert triples(splits[0].query) == expected_sysu(sysu_root, SYSU_TEST, (3, 6))
    for t, split in enumerate(splits):
        assert split.gallery == sysu.sysu_gallery(sysu_root, "indoor", 1, t)


def test_load_test_splits_regdb_directions(regdb_root):
    v2t, t2v = datasets.load_test_splits("regdb", regdb_root, trial=1)
    rgb, ir = regdb.regdb_split(regdb_root, 1, "test")
    assert (v2t.name, v2t.query, v2t.gallery) == ("visible2thermal", rgb, ir)
    assert (t2v.name, t2v.query, t2v.gallery) == ("thermal2visible", ir, rgb)
    only = datasets.load_test_splits("regdb", regdb_root, trial=2, directions=("thermal2visible",))
    assert [s.name for s in only] == ["thermal2visible"] and only[0].query[0].modality == IR


def test_load_test_splits_validation(sysu_root, regdb_root):
    with pytest.raises(DataError, match="--mode"):
        datasets.load_test_splits("sysu", sysu_root, mode="outdoor")
    with pytest.raises(DataError, match="--shot"):
        datasets.load_test_splits("sysu", sysu_root, shot=5)
    with pytest.raises(DataError, match="--mode"):
        datasets.load_test_splits("regdb", regdb_root, trial=1, mode="indoor")
    with pytest.raises(DataError, match="directions"):
        datasets.load_test_splits("regdb", regdb_root, trial=1, directions=("v2t",))


def test_check_root(tmp_path, sysu_root, regdb_root):
    assert datasets.check_root("sysu", sysu_root) == os.path.abspath(sysu_root)
    with pytest.raises(DataError, match=r"expected cam1\.\.cam6 and exp/ under .*Preparing data"):
        datasets.check_root("sysu", regdb_root)
    with pytest.raises(DataError, match="idx"):
        datasets.check_root("regdb", sysu_root)
    with pytest.raises(DataError, match="does not exist"):
        datasets.check_root("regdb", str(tmp_path / "nothing"))


def test_image_paths_cover_every_reader(sysu_root, regdb_root):
    paths = datasets.image_paths("sysu", sysu_root)
    n_test_rgb = sum(n for pid in SYSU_TEST for c, n in SYSU_LAYOUT[pid].items() if c in (1, 2, 4, 5))
    assert len(paths) == 13 + 9 + 12 + n_test_rgb == len(set(paths))
    assert len(datasets.image_paths("regdb", regdb_root, "all")) == 6 * 3 * 2
    assert len(datasets.image_paths("regdb", regdb_root, 1)) == 6 * 3 * 2
