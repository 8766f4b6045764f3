"""Qualitative figures for re-ID results: ranked-list grids (PIL) and CMC curves (matplotlib).

``save_rank_grid`` needs only Pillow. ``save_cmc_curve`` imports matplotlib inside the function
and draws on an Agg canvas directly, so importing this module never touches matplotlib's global
backend.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Tuple

import numpy as np
from PIL import Image

from utils.metrics import stable_argsort, sysu_kept_gallery

# Grid layout (pixels). Every cell is a thumbnail surrounded by a FRAME-wide coloured border;
# a GAP-wide blank column separates the query from its ranked gallery images.
FRAME = 4
GAP = 8
MATCH_COLOR = (0, 190, 0)        # gallery image of the query's identity
MISMATCH_COLOR = (220, 0, 0)     # any other identity
QUERY_COLOR = (40, 90, 220)      # frame of the query image itself
BACKGROUND = (255, 255, 255)     # empty cells (fewer than topk kept gallery items)


def _ensure_parent(path: str) -> None:
    """Create the folder that will hold ``path`` (no-op for a bare file name)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


def _framed_thumb(path: str, thumb: Tuple[int, int], color) -> Image.Image:
    """Image at ``path`` resized to thumb = (height, width), inside a FRAME-wide border."""
    h, w = thumb
    with Image.open(path) as img:
        small = img.convert("RGB").resize((w, h), Image.BILINEAR)
    cell = Image.new("RGB", (w + 2 * FRAME, h + 2 * FRAME), color)
    cell.paste(small, (FRAME, FRAME))
    return cell


def _top_k(distmat: np.ndarray, q: int, topk: int, q_camids, g_camids) -> np.ndarray:
    """Gallery indices of the first ``topk`` ranked items of query ``q`` (stable ranking, with
    the SYSU cam-3/cam-2 removal applied when camera ids are given)."""
    order = stable_argsort(distmat[q:q + 1])[0]
    if q_camids is not None and g_camids is not None:
        order = order[sysu_kept_gallery(q_camids[q], np.asarray(g_camids))[order]]
    return order[:topk]


def save_rank_grid(path: str, query_paths: Sequence[str], gallery_paths: Sequence[str],
                   distmat, q_pids, g_pids, num_queries: int, topk: int = 10,
                   q_camids=None, g_camids=None, seed: int = 0,
                   thumb: Tuple[int, int] = (128, 64)) -> str:
    """Write a PNG grid of ranked lists: one row per query, query image then its top-k gallery.

    Args:
        path: output PNG file (parent folders are created).
        query_paths, gallery_paths: image files, length Q and G.
        distmat: (Q, G) distances, smaller = closer (ranked with ties -> lower gallery index).
        q_pids, g_pids: (Q,), (G,) identities; a gallery frame is MATCH_COLOR (green) when the
            identity equals the query's, else MISMATCH_COLOR (red).
        num_queries: rows to draw; min(num_queries, Q) queries are drawn at random without
            replacement (``seed``) and shown in increasing query index.
        topk: gallery images per row; cells stay BACKGROUND when fewer items are kept.
        q_camids, g_camids: optional raw SYSU cameras; when both are given, camera-2 gallery
            images are removed from the lists of camera-3 queries (method.md H.2).
        thumb: (height, width) of every thumbnail, without the frame.

    The image is (topk + 1) * (w + 2*FRAME) + GAP pixels wide and rows * (h + 2*FRAME) high.
    Returns ``path``.
    """
    d = np.asarray(distmat.detach().cpu().numpy() if hasattr(distmat, "detach") else distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    if d.ndim != 2 or d.shape != (len(query_paths), len(gallery_paths)):
        raise ValueError(f"distmat shape {d.shape} does not match {len(query_paths)} query_paths "
                         f"x {len(gallery_paths)} gallery_paths")
    if len(q_pids) != d.shape[0] or len(g_pids) != d.shape[1]:
        raise ValueError("q_pids / g_pids lengths must match the distmat rows / columns")
    if num_queries < 1 or topk < 1:
        raise ValueError("num_queries and topk must be positive")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(d.shape[0], size=min(num_queries, d.shape[0]), replace=False))
    cell_w, cell_h = thumb[1] + 2 * FRAME, thumb[0] + 2 * FRAME
    grid = Image.new("RGB", ((topk + 1) * cell_w + GAP, len(chosen) * cell_h), BACKGROUND)
    for row, q in enumerate(chosen):
        y = row * cell_h
        grid.paste(_framed_thumb(query_paths[q], thumb, QUERY_COLOR), (0, y))
        for col, g in enumerate(_top_k(d, int(q), topk, q_camids, g_camids)):
            color = MATCH_COLOR if g_pids[g] == q_pids[q] else MISMATCH_COLOR
            x = GAP + (col + 1) * cell_w
            grid.paste(_framed_thumb(gallery_paths[g], thumb, color), (x, y))
    _ensure_parent(path)
    grid.save(path, format="PNG")
    return path


def save_cmc_curve(path: str, cmc_by_name: Dict[str, np.ndarray], title: str,
                   size_inches: Tuple[float, float] = (6.0, 4.5), dpi: int = 100) -> str:
    """Write a PNG plot of one or more CMC curves (rank 1..len on x, percent on y).

    Args:
        path: output PNG (parent folders are created).
        cmc_by_name: legend label -> CMC array of fractions in [0, 1] (as returned by
            ``utils.metrics``); curves may have different lengths.
        title: figure title.
        size_inches, dpi: figure size; the PNG is size_inches * dpi pixels (600 x 450 default).

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).
    Returns ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not cmc_by_name:
        raise ValueError("cmc_by_name is empty: nothing to plot")
    fig = Figure(figsize=size_inches, dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, cmc in cmc_by_name.items():
        cmc = np.asarray(cmc, dtype=np.float64).reshape(-1)
        if cmc.size == 0:
            raise ValueError(f"CMC curve {name!r} is empty")
        ranks = np.arange(1, cmc.size + 1)
        ax.plot(ranks, 100.0 * cmc, marker="o", markersize=3,
                label=f"{name} (R1 {100.0 * cmc[0]:.1f}%)")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    _ensure_parent(path)
    canvas.print_png(path)
    return path


__all__ = ["save_rank_grid", "save_cmc_curve", "FRAME", "GAP", "MATCH_COLOR", "MISMATCH_COLOR",
           "QUERY_COLOR", "BACKGROUND"]
