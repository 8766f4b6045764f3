"""utils/visualize.py: PNGs are written, have the documented size and the right frame colours."""
import numpy as np
import pytest
from PIL import Image

from utils.visualize import (BACKGROUND, FRAME, GAP, MATCH_COLOR, MISMATCH_COLOR, QUERY_COLOR,
                             save_cmc_curve, save_rank_grid)

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


def cell(img, row, col):
    """(frame colour, interior colour) of a grid cell; col 0 = query, 1.. = ranked gallery."""
    x = 0 if col == 0 else GAP + col * CELL_W
    y = row * CELL_H
    return img.getpixel((x + 1, y + 1)), img.getpixel((x + CELL_W // 2, y + CELL_H // 2))


def test_rank_grid_sysu_removal(tmp_path, images):
    out = save_rank_grid(str(tmp_path / "a" / "b" / "grid.png"), images[0], images[1], DIST,
                         Q_PIDS, G_PIDS, num_queries=5, topk=4, q_camids=Q_CAMS,
                         g_camids=G_CAMS, thumb=THUMB)
    img = Image.open(out).convert("RGB")
    assert img.size == (5 * CELL_W + GAP, 2 * CELL_H)
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
    out = save_rank_grid(str(tmp_path / "grid.png"), images[0], images[1], DIST, Q_PIDS, G_PIDS,
                         num_queries=1, topk=2, seed=3, thumb=THUMB)
    img = Image.open(out).convert("RGB")
    assert img.size == (3 * CELL_W + GAP, CELL_H)
    q = Q_FILL.index(cell(img, 0, 0)[1])
    chosen = int(np.sort(np.random.default_rng(3).choice(2, size=1, replace=False))[0])
    assert q == chosen
    want = {0: [(MATCH_COLOR, G_FILL[0]), (MISMATCH_COLOR, G_FILL[1])],   # no removal for q0
            1: [(MATCH_COLOR, G_FILL[1]), (MISMATCH_COLOR, G_FILL[2])]}
    assert [cell(img, 0, 1), cell(img, 0, 2)] == want[q]


def test_rank_grid_shape_error(tmp_path, images):
    with pytest.raises(ValueError, match="distmat"):
        save_rank_grid(str(tmp_path / "g.png"), images[0], images[1], DIST[:, :3], Q_PIDS,
                       G_PIDS, num_queries=1, thumb=THUMB)


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
