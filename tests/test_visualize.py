"""utils/evaluation/visualize.py: PNGs are written, have the documented size, the right frame colours and a
legend; test.py's CMC picture plots the mean over the gallery trials."""

import numpy as np
import pytest
from PIL import Image

from utils.evaluation.visualize import (BACKGROUND, FRAME, GAP, LINE_H, MATCH_COLOR, MISMATCH_COLOR, QUERY_COLOR,
                                        REMOVAL_TEXT, SWATCH, SplitImages, legend_items, save_cmc_curve,
                                        save_rank_grid)

THUMB = (16, 8)                                   # (height, width)
CELL_W, CELL_H = THUMB[1] + 2 * FRAME, THUMB[0] + 2 * FRAME
G_FILL = [(255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 128, 128)]
Q_FILL = [(50, 50, 50), (200, 200, 200)]
# query pids [1, 2], cams [3, 6]; gallery pids [1, 2, 1, 3], cams [2, 1, 4, 5]
Q_PIDS, G_PIDS = np.array([1, 2]), np.array([1, 2, 1, 3])
Q_CAMS, G_CAMS = np.array([3, 6]), np.array([2, 1, 4, 5])
# q0 ranks g0,g1,g2,g3; q1 ranks g1,g2,g3,g0
DIST = np.array([[0.1, 0.2, 0.3, 0.4],
                 [0.4, 0.1, 0.2, 0.3]])


@pytest.fixture
def images(tmp_path):
    """Solid-colour images of odd sizes, so every cell can be identified by its interior colour."""
    def write(name, color):
        """Save a solid 30x70 image under tmp_path/img and return its path."""
        p = tmp_path / "img" / name
        p.parent.mkdir(exist_ok=True)
        Image.new("RGB", (30, 70), color).save(p)
        return str(p)
    return ([write(f"q{i}.png", c) for i, c in enumerate(Q_FILL)],
            [write(f"g{i}.png", c) for i, c in enumerate(G_FILL)])


def assert_grid_size(img, width, grid_height):
    """The grid keeps its documented size; a legend band of whole LINE_H lines sits under it."""
    assert img.size[0] == width
    band = img.size[1] - grid_height
    assert band >= LINE_H and band % LINE_H == 0, img.size
    return band // LINE_H


def legend_swatches(img, grid_height):
    """Colours of the solid SWATCH x SWATCH squares in the legend band (scanned pixel by pixel)."""
    arr = np.asarray(img)[grid_height:]
    found = set()
    for y in range(arr.shape[0] - SWATCH + 1):
        for x in range(arr.shape[1] - SWATCH + 1):
            block = arr[y:y + SWATCH, x:x + SWATCH].reshape(-1, 3)
            if (block == block[0]).all() and tuple(block[0]) != BACKGROUND:
                found.add(tuple(int(v) for v in block[0]))
    return found


def cell(img, row, col):
    """(frame colour, interior colour) of a grid cell; col 0 = query, 1.. = ranked gallery."""
    x = 0 if col == 0 else GAP + col * CELL_W
    y = row * CELL_H
    return img.getpixel((x + 1, y + 1)), img.getpixel((x + CELL_W // 2, y + CELL_H // 2))


def test_rank_grid_sysu_removal(tmp_path, images):
    out = save_rank_grid(str(tmp_path / "a" / "b" / "grid.png"),
                         SplitImages(images[0], images[1], Q_PIDS, G_PIDS, q_camids=Q_CAMS, g_camids=G_CAMS),
                         DIST, num_queries=5, topk=4, thumb=THUMB)
    img = Image.open(out).convert("RGB")
    assert_grid_size(img, 5 * CELL_W + GAP, 2 * CELL_H)
    # row 0: cam-3 query, g0 (cam 2) removed -> g1 (pid 2, red), g2 (pid 1, green), g3 (red), empty
    assert cell(img, 0, 0) == (QUERY_COLOR, Q_FILL[0])
    assert cell(img, 0, 1) == (MISMATCH_COLOR, G_FILL[1])
    assert cell(img, 0, 2) == (MATCH_COLOR, G_FILL[2])
    assert cell(img, 0, 3) == (MISMATCH_COLOR, G_FILL[3])
    assert cell(img, 0, 4) == (BACKGROUND, BACKGROUND)
    # row 1: cam-6 query pid 2 -> g1 (green), g2 (red), g3 (red), g0 (red)
    assert cell(img, 1, 0) == (QUERY_COLOR, Q_FILL[1])
    assert [cell(img, 1, c) for c in range(1, 5)] == [
        (MATCH_COLOR, G_FILL[1]), (MISMATCH_COLOR, G_FILL[2]), (MISMATCH_COLOR, G_FILL[3]),
        (MISMATCH_COLOR, G_FILL[0])]


def test_rank_grid_without_cameras_and_sampling(tmp_path, images):
    out = save_rank_grid(str(tmp_path / "grid.png"), SplitImages(images[0], images[1], Q_PIDS, G_PIDS), DIST,
                         num_queries=1, topk=2, seed=3, thumb=THUMB)
    img = Image.open(out).convert("RGB")
    assert_grid_size(img, 3 * CELL_W + GAP, CELL_H)
    q = Q_FILL.index(cell(img, 0, 0)[1])
    chosen = int(np.sort(np.random.default_rng(3).choice(2, size=1, replace=False))[0])
    assert q == chosen
    want = {0: [(MATCH_COLOR, G_FILL[0]), (MISMATCH_COLOR, G_FILL[1])],   # no removal for q0
            1: [(MATCH_COLOR, G_FILL[1]), (MISMATCH_COLOR, G_FILL[2])]}
    assert [cell(img, 0, 1), cell(img, 0, 2)] == want[q]


def test_rank_grid_shape_error(tmp_path, images):
    with pytest.raises(ValueError, match="distmat"):
        save_rank_grid(str(tmp_path / "g.png"), SplitImages(images[0], images[1], Q_PIDS, G_PIDS), DIST[:, :3],
                       num_queries=1, thumb=THUMB)


def test_cmc_curve(tmp_path):
    cmc = np.linspace(0.5, 1.0, 20)
    curves = {"MMM": cmc, "baseline": cmc[:10] * 0.9}
    out = save_cmc_curve(str(tmp_path / "x" / "cmc.png"), curves, "SYSU all-search")
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (600, 450)
    out = save_cmc_curve(str(tmp_path / "small.png"), {"a": cmc}, "t", size_inches=(3, 2), dpi=50)
    assert Image.open(out).size == (150, 100)
    with pytest.raises(ValueError):
        save_cmc_curve(str(tmp_path / "none.png"), {}, "t")


def test_rank_grid_llcm_removal(tmp_path, images):
    """LLCM rule: only gallery items of the query's identity *and* camera are skipped."""
    q_cams, g_cams = np.array([4, 2]), np.array([4, 2, 7, 4])    # g0 is pid 1 in cam 4: removed for q0
    out = save_rank_grid(str(tmp_path / "llcm.png"),
                         SplitImages(images[0], images[1], Q_PIDS, G_PIDS, q_camids=q_cams, g_camids=g_cams,
                                     removal="same_id_same_camera"),
                         DIST, num_queries=2, topk=4, thumb=THUMB)
    img = Image.open(out).convert("RGB")
    # q0 (pid 1, cam 4): g0 skipped; g1 (pid 2, red), g2 (pid 1 cam 7, green), g3 (pid 3 cam 4, red: other id)
    assert [cell(img, 0, c) for c in range(1, 5)] == [
        (MISMATCH_COLOR, G_FILL[1]), (MATCH_COLOR, G_FILL[2]), (MISMATCH_COLOR, G_FILL[3]), (BACKGROUND, BACKGROUND)]
    # q1 (pid 2, cam 2): g1 is pid 2 in cam 2 -> skipped; g2, g3, g0 are other identities
    assert [cell(img, 1, c) for c in range(1, 5)] == [
        (MISMATCH_COLOR, G_FILL[2]), (MISMATCH_COLOR, G_FILL[3]), (MISMATCH_COLOR, G_FILL[0]), (BACKGROUND, BACKGROUND)]


def test_rank_grid_legend(tmp_path, images):
    """The legend band shows the three frame colours and grows with the removal line and a note."""
    wide = (16, 40)                                   # wide cells: the legend has room to be read
    grid_h = 2 * (wide[0] + 2 * FRAME)
    width = 11 * (wide[1] + 2 * FRAME) + GAP
    plain = Image.open(save_rank_grid(str(tmp_path / "a.png"), SplitImages(images[0], images[1], Q_PIDS, G_PIDS),
                                      DIST, num_queries=2, thumb=wide)).convert("RGB")
    with_rule = Image.open(save_rank_grid(str(tmp_path / "b.png"),
                                          SplitImages(images[0], images[1], Q_PIDS, G_PIDS, Q_CAMS, G_CAMS), DIST,
                                          num_queries=2, thumb=wide,
                                          note="SYSU-MM01 all-search, gallery trial0")).convert("RGB")
    n_plain = assert_grid_size(plain, width, grid_h)
    n_rule = assert_grid_size(with_rule, width, grid_h)
    assert n_rule > n_plain
    for img in (plain, with_rule):
        assert {QUERY_COLOR, MATCH_COLOR, MISMATCH_COLOR} <= legend_swatches(img, grid_h)
        band = np.asarray(img)[grid_h:]
        assert (band.max(axis=2) < 100).any()          # dark text pixels
    texts = [t for _, t in legend_items("same_id_same_camera", "note")]
    assert texts[:3] == ["query", "same identity", "other identity"]
    assert REMOVAL_TEXT["same_id_same_camera"] in texts and texts[-1] == "note"
    assert set(REMOVAL_TEXT) == {"none", "sysu_same_room", "same_id_same_camera"}
    assert not any(t in REMOVAL_TEXT.values() for _, t in legend_items(None, None))


def test_cmc_curve_with_std_band(tmp_path):
    cmc = np.linspace(0.5, 1.0, 20)
    out = save_cmc_curve(str(tmp_path / "band.png"), {"a": cmc, "b": cmc * 0.8}, "t",
                         std_by_name={"a": np.full(20, 0.05)})
    assert Image.open(out).size == (600, 450)
    with pytest.raises(ValueError, match="std"):
        save_cmc_curve(str(tmp_path / "bad.png"), {"a": cmc}, "t", std_by_name={"a": np.zeros(5)})


def test_testpy_pictures_plot_the_mean_cmc_over_trials(tmp_path, images, monkeypatch):
    """test.py --visualize (utils.evaluation.run_test.write_pictures): one rank grid per protocol (gallery
    trial 0) and a CMC picture whose curves are the mean (and std) over the protocol's gallery trials,
    labelled as such, re-ranked curves included."""
    from data.sample import IR, RGB, Sample, TestSplit
    from utils.evaluation import visualize
    from utils.evaluation.run_test import write_pictures

    query = [Sample(p, int(pid), int(c), IR) for p, pid, c in zip(images[0], Q_PIDS, Q_CAMS)]
    gallery = [Sample(p, int(pid), int(c), RGB) for p, pid, c in zip(images[1], G_PIDS, G_CAMS)]
    cmcs = [np.linspace(0.2, 1.0, 20), np.linspace(0.4, 1.0, 20), np.full(20, 0.9)]
    splits = [TestSplit(f"trial{i}", query, gallery) for i in range(3)]
    results = {"all-search": {"_cmcs": cmcs, "_splits": splits, "_distmats": [DIST, None, None]}}
    reranked = {"all-search": {"_cmcs": cmcs[:2]}}
    seen = {}
    monkeypatch.setattr(visualize, "save_cmc_curve",
                        lambda path, curves, title, std_by_name=None: seen.update(curves=curves, std=std_by_name,
                                                                                  title=title))
    write_pictures(results, reranked, str(tmp_path / "out" / "test_sysu_all"), 2, "sysu")
    assert (tmp_path / "out" / "test_sysu_all_all-search_ranks.png").is_file()
    assert list(seen["curves"]) == ["all-search, mean of 3 gallery trials",
                                    "all-search re-ranked, mean of 2 gallery trials"]
    np.testing.assert_allclose(seen["curves"]["all-search, mean of 3 gallery trials"], np.mean(cmcs, axis=0))
    np.testing.assert_allclose(seen["std"]["all-search re-ranked, mean of 2 gallery trials"],
                               np.std(cmcs[:2], axis=0))
    assert "mean CMC" in seen["title"]
