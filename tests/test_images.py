"""Image decoding, resizing, the pre-resized cache and the torch datasets."""
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_readers import make_regdb, make_sysu

from data import regdb, sysu
from data.images import (INTERPOLATIONS, ImageCache, ImageDataset, PairedDataset, default_cache_dir,
                         load_image, resize_uint8)
from data.sample import DataError, paths_of


def _save(path, arr, fmt=None):
    Image.fromarray(arr).save(str(path), format=fmt)
    return str(path)


# ---------------------------------------------------------------- load_image / resize_uint8

def test_load_image_converts_gray_to_rgb(tmp_path):
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    img = load_image(_save(tmp_path / "ir.png", gray))
    arr = np.asarray(img)
    assert img.mode == "RGB" and arr.shape == (4, 6, 3)
    assert (arr == gray[..., None]).all()  # the three channels are the gray value


@pytest.mark.parametrize("content, words", [(None, "does not exist"), (b"", "zero-byte"),
                                            (b"this is not a jpeg", "cannot be decoded")])
def test_load_image_errors_name_the_path(tmp_path, content, words):
    path = tmp_path / "0001.jpg"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=words) as info:
        load_image(str(path))
    assert str(path) in str(info.value) and "--check-images" in str(info.value)


def test_load_image_truncated_jpeg(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    path = _save(tmp_path / "t.jpg", arr)
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot be decoded"):
        load_image(path)


def test_resize_uint8_shape_and_known_values(tmp_path):
    # a constant image stays constant under any interpolation: known answer 77
    img = Image.fromarray(np.full((50, 30, 3), 77, dtype=np.uint8))
    for name in INTERPOLATIONS:
        out = resize_uint8(img, 288, 144, name)
        assert out.shape == (288, 144, 3) and out.dtype == np.uint8 and (out == 77).all()
    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 30, 3), dtype=np.uint8))
    bic, lan = resize_uint8(noise, 24, 12, "bicubic"), resize_uint8(noise, 24, 12, "lanczos")
    assert not np.array_equal(bic, lan)  # the named filter really is used
    assert np.array_equal(bic, np.asarray(noise.resize((12, 24), Image.BICUBIC)))
    assert resize_uint8(noise.convert("L"), 8, 4, "bicubic").shape == (8, 4, 3)
    with pytest.raises(DataError, match="--interpolation"):
        resize_uint8(noise, 8, 4, "nearest")


# ---------------------------------------------------------------- ImageCache

@pytest.fixture
def sysu_root(tmp_path):
    return make_sysu(tmp_path / "SYSU-MM01")


def test_cache_is_byte_identical_to_decoding(sysu_root):
    rgb, ir = sysu.sysu_train(sysu_root)
    paths = paths_of(rgb + ir)
    cache_dir = default_cache_dir(sysu_root)
    assert cache_dir == os.path.join(sysu_root, "mmm_cache")
    for interp in INTERPOLATIONS:
        built = ImageCache.build(cache_dir, sysu_root, paths, 16, 8, interp, progress=False)
        opened = ImageCache.open(cache_dir, sysu_root, 16, 8, interp)
        assert len(opened) == len(paths) == len(built)
        for p in paths:
            direct = resize_uint8(load_image(p), 16, 8, interp)
            got = opened.get(p)
            assert got.dtype == np.uint8 and got.shape == (16, 8, 3)
            assert got.tobytes() == direct.tobytes()
    assert sorted(os.listdir(cache_dir)) == sorted(
        f"{kind}_16x8_{i}.{ext}" for i in INTERPOLATIONS for kind, ext in (("images", "npy"), ("index", "json")))
    assert opened.get(os.path.join(sysu_root, "cam1", "0008", "0001.jpg")) is None  # id 8 is in no split


def test_cache_survives_moving_the_dataset(tmp_path, sysu_root):
    rgb, _ = sysu.sysu_train(sysu_root)
    ImageCache.build(default_cache_dir(sysu_root), sysu_root, paths_of(rgb), 16, 8, "bicubic", progress=False)
    moved = str(tmp_path / "moved")
    os.rename(sysu_root, moved)
    cache = ImageCache.open(default_cache_dir(moved), moved, 16, 8, "bicubic")
    moved_rgb, _ = sysu.sysu_train(moved)
    assert np.array_equal(cache.get(moved_rgb[3].path), resize_uint8(load_image(moved_rgb[3].path), 16, 8, "bicubic"))


def test_cache_open_absent_mismatched_and_pickled(tmp_path, sysu_root):
    assert ImageCache.open(str(tmp_path / "none"), sysu_root, 16, 8, "bicubic") is None
    rgb, _ = sysu.sysu_train(sysu_root)
    cache_dir = str(tmp_path / "c")
    cache = ImageCache.build(cache_dir, sysu_root, paths_of(rgb), 16, 8, "lanczos", progress=False)
    assert ImageCache.open(cache_dir, sysu_root, 16, 8, "bicubic") is None  # other filter: not built
    first = cache.get(rgb[0].path)
    clone = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker receives
    assert clone._array is None and np.array_equal(clone.get(rgb[0].path), first)
    # an index that disagrees with the array (e.g. a foreign or interrupted build) is an error
    np.save(os.path.join(cache_dir, "images_16x8_lanczos.npy"), np.zeros((2, 16, 8, 3), np.uint8))
    with pytest.raises(DataError, match="prepare_data"):
        ImageCache.open(cache_dir, sysu_root, 16, 8, "lanczos")


def test_cache_build_failure_leaves_no_files(tmp_path, sysu_root):
    rgb, _ = sysu.sysu_train(sysu_root)
    open(rgb[2].path, "wb").close()  # zero-byte image
    cache_dir = str(tmp_path / "c")
    with pytest.raises(DataError, match="zero-byte"):
        ImageCache.build(cache_dir, sysu_root, paths_of(rgb), 16, 8, "bicubic", progress=False)
    assert os.listdir(cache_dir) == []


# ---------------------------------------------------------------- datasets

def test_image_dataset_with_and_without_cache(sysu_root):
    rgb, _ = sysu.sysu_train(sysu_root)
    cache = ImageCache.build(default_cache_dir(sysu_root), sysu_root, paths_of(rgb), 16, 8, "bicubic",
                             progress=False)
    plain = ImageDataset(rgb, h=16, w=8)
    cached = ImageDataset(rgb, h=16, w=8, cache=cache)
    assert len(plain) == len(cached) == len(rgb)
    for i in range(len(rgb)):
        img_a, pid_a, cam_a, idx_a = plain[i]
        img_b, pid_b, cam_b, idx_b = cached[i]
        assert isinstance(img_a, Image.Image) and img_a.size == (8, 16)
        assert np.asarray(img_a).tobytes() == np.asarray(img_b).tobytes()
        assert (pid_a, cam_a, idx_a) == (pid_b, cam_b, idx_b) == (rgb[i].pid, rgb[i].cam, i)
    with pytest.raises(ValueError, match="cache holds"):
        ImageDataset(rgb, h=16, w=8, interpolation="lanczos", cache=cache)


@pytest.mark.slow  # DataLoader worker processes
def test_image_dataset_labels_transform_and_loader(sysu_root):
    rgb, _ = sysu.sysu_train(sysu_root)
    labels = np.arange(len(rgb))[::-1] + 100

    def two_views(img):
        t = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)
        return t, t.flip(-1)

    ds = ImageDataset(rgb, transform=two_views, labels=labels, h=16, w=8)
    (a, b), label, cam, i = ds[4]
    assert a.shape == (3, 16, 8) and torch.equal(b, a.flip(-1))
    assert (label, cam, i) == (int(labels[4]), rgb[4].cam, 4)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2, shuffle=False)
    (a, _), labels_b, cams_b, idx_b = next(iter(loader))
    assert a.shape == (5, 3, 16, 8) and idx_b.tolist() == [0, 1, 2, 3, 4]
    assert labels_b.tolist() == labels[:5].tolist()
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(rgb, labels=labels[:3])


@pytest.mark.slow  # DataLoader worker processes
def test_cached_dataset_in_forked_workers(sysu_root):
    rgb, _ = sysu.sysu_train(sysu_root)
    cache = ImageCache.build(default_cache_dir(sysu_root), sysu_root, paths_of(rgb), 16, 8, "lanczos",
                             progress=False)
    cache.get(rgb[0].path)  # the parent opens its memmap first; workers must open their own

    def to_tensor(img):
        return torch.from_numpy(np.asarray(img).copy())

    ds = ImageDataset(rgb, transform=to_tensor, h=16, w=8, interpolation="lanczos", cache=cache)
    loader = torch.utils.data.DataLoader(ds, batch_size=len(rgb), num_workers=2)
    imgs = next(iter(loader))[0]
    expected = np.stack([resize_uint8(load_image(s.path), 16, 8, "lanczos") for s in rgb])
    assert np.array_equal(imgs.numpy(), expected)


def test_paired_dataset(tmp_path):
    root = make_regdb(tmp_path / "RegDB")
    rgb, ir = regdb.regdb_split(root, 1, "train")
    paired = PairedDataset(ImageDataset(rgb[:5], h=16, w=8), ImageDataset(ir, h=16, w=8))
    assert len(paired) == len(ir) == 9
    item = paired[(3, 7)]
    assert len(item) == 8
    img_rgb, label_rgb, cam_rgb, i_rgb, img_ir, label_ir, cam_ir, i_ir = item
    assert (label_rgb, cam_rgb, i_rgb) == (rgb[3].pid, 1, 3)
    assert (label_ir, cam_ir, i_ir) == (ir[7].pid, 2, 7)
    assert np.array_equal(np.asarray(img_ir), resize_uint8(load_image(ir[7].path), 16, 8, "bicubic"))
