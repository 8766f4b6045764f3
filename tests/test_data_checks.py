"""Reliability, round two (issue 19): every input checked where it enters (dataset lists before the
first epoch, stage-1 artifacts, pretrained weights, images of other formats), and test.py's results never
overwritten silently. In-process, on tiny generated data."""
import os
import shutil

import numpy as np
import pytest
import torch

from data.sample import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def regdb(tmp_path_factory):
    from data.synthetic import generate_regdb

    root = tmp_path_factory.mktemp("regdb") / "RegDB"
    generate_regdb(str(root), ids=8, seed=1, height=32, width=16, images_per_id=2)
    return root


@pytest.fixture
def sysu_copy(tiny_sysu, tmp_path):
    root = tmp_path / "sysu"
    shutil.copytree(tiny_sysu, root)
    return root


# dataset lists ------------------------------------------------------------------------------------------

def test_byte_order_marks_in_index_files_are_ignored(sysu_copy, regdb, tmp_path):
    from data.datasets import check_dataset, load_protocols, load_train

    for name in ("train_id.txt", "test_id.txt"):
        path = sysu_copy / "exp" / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_train("sysu", str(sysu_copy))[0]) > 0
    check_dataset("sysu", str(sysu_copy))
    copy = tmp_path / "regdb"
    shutil.copytree(regdb, copy)
    path = copy / "idx" / "test_visible_1.txt"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_protocols("regdb", str(copy), trial=1)["visible2thermal"][0].query) > 0


def test_overlapping_train_and_test_ids_refused(sysu_copy):
    from data.datasets import check_dataset

    test_ids = (sysu_copy / "exp" / "test_id.txt").read_text().strip()
    train = sysu_copy / "exp" / "train_id.txt"
    train.write_text(train.read_text().strip().rstrip(",") + "," + test_ids.split(",")[0] + "\n")
    with pytest.raises(DataError, match="both training and test images") as info:
        check_dataset("sysu", str(sysu_copy))
    assert "exp/train_id.txt" in str(info.value) and "exp/test_id.txt" in str(info.value)


def test_regdb_test_labels_matching_no_gallery_name_the_lists(regdb, tmp_path):
    from data.datasets import check_dataset, load_protocols

    copy = tmp_path / "regdb"
    shutil.copytree(regdb, copy)
    path = copy / "idx" / "test_thermal_1.txt"
    path.write_text("".join(f"{line.rsplit(' ', 1)[0]} {int(line.rsplit(' ', 1)[1]) + 1000}\n"
                            for line in path.read_text().splitlines() if line.strip()))
    for call in (lambda: check_dataset("regdb", str(copy), 1), lambda: load_protocols("regdb", str(copy), 1)):
        with pytest.raises(DataError, match="no query identity appears in the gallery") as info:
            call()
        assert "idx/test_visible_1.txt and idx/test_thermal_1.txt" in str(info.value)


@pytest.fixture(scope="module")
def llcm(tmp_path_factory):
    from data.synthetic_llcm import generate_llcm

    root = tmp_path_factory.mktemp("llcm") / "LLCM"
    generate_llcm(str(root), ids=8, seed=2, height=32, width=16, images_per_cam=(1, 2))
    return root


def test_llcm_test_id_without_images_found_before_training(llcm, tmp_path):
    """prepare_run (the start of either stage) resolves the test protocol: the missing id is reported
    before the first epoch, not by the first evaluation."""
    from utils.args import stage1_parser, parse
    from utils.run import prepare_run
    from utils.settings import stage1_settings

    copy = tmp_path / "LLCM"
    shutil.copytree(llcm, copy)
    (copy / "idx" / "test_id.txt").write_text((copy / "idx" / "test_id.txt").read_text().strip() + ",9999\n")
    args = parse(stage1_parser("llcm"), ["--data-dir", str(copy), "--output-dir", str(tmp_path / "out"),
                                           "--device", "cpu"], dataset="llcm")
    with pytest.raises(DataError, match="id 9999 listed in"):
        prepare_run(stage1_settings(args), last_checkpoint=os.path.join("intra", "last.pth"))
    assert not (tmp_path / "out" / "llcm" / "baseline" / "args.json").exists()


def test_llcm_two_labels_in_one_list_not_called_both_lists(llcm, tmp_path):
    from data.llcm import llcm_train

    copy = tmp_path / "LLCM"
    shutil.copytree(llcm, copy)
    path = copy / "idx" / "train_vis.txt"
    lines = path.read_text().splitlines()
    first_folder = os.path.dirname(lines[0].split()[0])
    same = [i for i, line in enumerate(lines) if os.path.dirname(line.split()[0]) == first_folder]
    assert len(same) > 1
    rel, label = lines[same[1]].rsplit(" ", 1)
    lines[same[1]] = f"{rel} {int(label) + 500}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        llcm_train(str(copy))
    assert "within idx/train_vis.txt" in str(info.value) and "both lists" not in str(info.value)


def test_data_dir_that_is_a_file(tmp_path):
    from data.datasets import check_root

    (tmp_path / "sysu.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="is a file, not a folder"):
        check_root("sysu", str(tmp_path / "sysu.zip"))


# files of the wrong kind ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["truncated", "json", "pickle"])
def test_bad_baseline_artifact_named_without_numpy_advice(tmp_path, case):
    from utils.artifacts import load_artifact

    path = tmp_path / ("x.json" if case == "json" else "pseudo_labels.npz")
    if case == "truncated":
        np.savez(path, paths_rgb=np.array(["a.jpg"] * 50), features_rgb=np.zeros((50, 64), np.float32))
        path.write_bytes(path.read_bytes()[:300])
    elif case == "json":
        path.write_text('{"labels": [1, 2]}')
    else:
        np.savez(path, paths_rgb=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError) as info:
        load_artifact(str(path))
    msg = str(info.value)
    assert str(path) in msg and "allow_pickle" not in msg and "\n" not in msg


def test_unreadable_artifact_metadata_named(tmp_path):
    from utils.artifacts import load_artifact

    arrays = {f"{a}_{m}": np.zeros(1, dtype) for m in ("rgb", "ir")
              for a, dtype in (("paths", "U4"), ("features", np.float32), ("labels", np.int64))}
    np.savez(tmp_path / "pseudo_labels.npz", **arrays)
    (tmp_path / "pseudo_labels.json").write_text("{not json")
    with pytest.raises(DataError, match="pseudo_labels.json"):
        load_artifact(str(tmp_path / "pseudo_labels.npz"))


def test_pretrained_file_with_nan_weights_named(tmp_path):
    import torchvision

    from model import PretrainedWeightsError, build_model

    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"].fill_(float("nan"))
    path = tmp_path / "diverged.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError) as info:
        build_model(arch="resnet18", num_classes=0, pretrained=str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_sixteen_bit_image_keeps_its_contrast(tmp_path):
    """A 16-bit thermal PNG: Pillow's own conversion would clip it to white."""
    from PIL import Image

    from data.images import load_image

    values = np.linspace(0, 65535, 32 * 16).reshape(32, 16).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "t.png")
    rgb = np.asarray(load_image(str(tmp_path / "t.png")))
    assert rgb.shape == (32, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], (values >> 8).astype(np.uint8))
    Image.fromarray(values.astype(np.float32)).save(tmp_path / "f.tiff")
    with pytest.raises(DataError, match="floating-point"):
        load_image(str(tmp_path / "f.tiff"))
