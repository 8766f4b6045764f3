"""Qualitative figures for re-ID results: ranked-list grids (PIL) and CMC curves (matplotlib).

``save_rank_grid`` needs only Pillow. ``save_cmc_curve`` imports matplotlib inside the function
and draws on an Agg canvas directly, so importing this module never touches matplotlib's global
backend. Both pictures carry a legend: the grid a band under the rows (frame colours, the removal
rule, an optional note such as the gallery trial), the CMC plot one entry per curve.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.evaluation.metrics import kept_gallery, stable_argsort

# Grid layout (pixels). Every cell is a thumbnail surrounded by a FRAME-wide coloured border;
# a GAP-wide blank column separates the query from its ranked gallery images.
FRAME = 4
GAP = 8
MATCH_COLOR = (0, 190, 0)        # gallery image of the query's identity
MISMATCH_COLOR = (220, 0, 0)     # any other identity
QUERY_COLOR = (40, 90, 220)      # frame of the query image itself
BACKGROUND = (255, 255, 255)     # empty cells (fewer than topk kept gallery items)
TEXT_COLOR = (0, 0, 0)
# Legend band under the grid: lines of LINE_H pixels, each item a SWATCH-wide square and its label.
LINE_H = 14
SWATCH = 10
# What the removal rules of utils.evaluation.metrics drop from a ranked list, for the legend.
REMOVAL_TEXT = {"none": "nothing removed from the lists",
                "sysu_same_room": "camera-2 images skipped for camera-3 queries",
                "same_id_same_camera": "images of the query's identity and camera skipped"}


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


@dataclass(frozen=True)
class SplitImages:
    """The images of one query/gallery split as a rank grid shows them.

    Attributes:
        query_paths, gallery_paths: image files, length Q and G.
        q_pids, g_pids: (Q,), (G,) identities; a gallery frame is MATCH_COLOR (green) when the
            identity equals the query's, else MISMATCH_COLOR (red).
        q_camids, g_camids: optional (Q,), (G,) camera ids; when both are given, the protocol's ``removal``
            rule (utils.evaluation.metrics.kept_gallery) drops items from the lists: by default SYSU's
            (camera-2 images for camera-3 queries, method.md H.2); LLCM's is "same_id_same_camera".
    """

    query_paths: Sequence[str]
    gallery_paths: Sequence[str]
    q_pids: Any
    g_pids: Any
    q_camids: Any = None
    g_camids: Any = None
    removal: str = "sysu_same_room"

    @property
    def with_cameras(self) -> bool:
        """Whether the removal rule applies (both camera lists given)."""
        return self.q_camids is not None and self.g_camids is not None


def _top_k(distmat: np.ndarray, q: int, topk: int, images: SplitImages) -> np.ndarray:
    """Gallery indices of the first ``topk`` ranked items of query ``q`` (stable ranking, with
    the protocol's removal rule applied when camera ids are given)."""
    order = stable_argsort(distmat[q:q + 1])[0]
    if images.with_cameras:
        q_pids = np.asarray(images.q_pids)
        keep = kept_gallery(images.removal, q_pids[q], np.asarray(images.q_camids)[q], np.asarray(images.g_pids),
                            np.asarray(images.g_camids))
        order = order[keep[order]]
    return order[:topk]


def legend_items(removal: Optional[str], note: Optional[str]) -> List[Tuple[Optional[tuple], str]]:
    """(colour or None, text) of every legend entry of a rank grid, in drawing order."""
    items = [(QUERY_COLOR, "query"), (MATCH_COLOR, "same identity"), (MISMATCH_COLOR, "other identity"),
             (None, "ranked left to right, nearest first")]
    if removal is not None:
        items.append((None, REMOVAL_TEXT[removal]))
    if note:
        items.append((None, note))
    return items


def _legend_layout(items, width: int, font) -> List[List[Tuple[int, Optional[tuple], str]]]:
    """Lines of (x, colour, text): items fill a line left to right and wrap at ``width``."""
    lines, line, x = [], [], 2
    for color, text in items:
        w = (SWATCH + 3 if color is not None else 0) + int(font.getlength(text)) + 10
        if line and x + w > width:
            lines.append(line)
            line, x = [], 2
        line.append((x, color, text))
        x += w
    return lines + [line]


def _draw_legend(grid: Image.Image, top: int, lines, font) -> None:
    """Draw the laid-out legend lines on ``grid`` from row ``top`` down."""
    draw = ImageDraw.Draw(grid)
    for i, line in enumerate(lines):
        y = top + i * LINE_H + (LINE_H - SWATCH) // 2
        for x, color, text in line:
            if color is not None:
                draw.rectangle([x, y, x + SWATCH - 1, y + SWATCH - 1], fill=color)
                x += SWATCH + 3
            draw.text((x, y - 1), text, fill=TEXT_COLOR, font=font)


def save_rank_grid(path: str, images: SplitImages, distmat, num_queries: int, topk: int = 10, seed: int = 0,
                   thumb: Tuple[int, int] = (128, 64), note: Optional[str] = None) -> str:
    """Write a PNG grid of ranked lists: one row per query, query image then its top-k gallery,
    with a legend band underneath.

    Args:
        path: output PNG file (parent folders are created).
        images: the Q query and G gallery images, their identities, cameras and removal rule.
        distmat: (Q, G) distances, smaller = closer (ranked with ties -> lower gallery index).
        num_queries: rows to draw; min(num_queries, Q) queries are drawn at random without
            replacement (``seed``) and shown in increasing query index.
        topk: gallery images per row; cells stay BACKGROUND when fewer items are kept.
        thumb: (height, width) of every thumbnail, without the frame.
        note: an extra legend line (e.g. which dataset, protocol and gallery trial is shown).

    The image is (topk + 1) * (w + 2*FRAME) + GAP pixels wide and rows * (h + 2*FRAME) +
    LINE_H * (legend lines) high; the legend names the frame colours, the ranking order, the removal
    rule (when cameras are given) and ``note``, wrapped to the width. Returns ``path``.
    """
    d = np.asarray(distmat.detach().cpu().numpy() if hasattr(distmat, "detach") else distmat)
    q_pids, g_pids = np.asarray(images.q_pids), np.asarray(images.g_pids)
    if d.ndim != 2 or d.shape != (len(images.query_paths), len(images.gallery_paths)):
        raise ValueError(f"distmat shape {d.shape} does not match {len(images.query_paths)} query_paths "
                         f"x {len(images.gallery_paths)} gallery_paths")
    if len(q_pids) != d.shape[0] or len(g_pids) != d.shape[1]:
        raise ValueError("q_pids / g_pids lengths must match the distmat rows / columns")
    if num_queries < 1 or topk < 1:
        raise ValueError("num_queries and topk must be positive")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(d.shape[0], size=min(num_queries, d.shape[0]), replace=False))
    cell_w, cell_h = thumb[1] + 2 * FRAME, thumb[0] + 2 * FRAME
    width = (topk + 1) * cell_w + GAP
    font = ImageFont.load_default()
    lines = _legend_layout(legend_items(images.removal if images.with_cameras else None, note), width, font)
    grid = Image.new("RGB", (width, len(chosen) * cell_h + LINE_H * len(lines)), BACKGROUND)
    for row, q in enumerate(chosen):
        y = row * cell_h
        grid.paste(_framed_thumb(images.query_paths[q], thumb, QUERY_COLOR), (0, y))
        for col, g in enumerate(_top_k(d, int(q), topk, images)):
            color = MATCH_COLOR if g_pids[g] == q_pids[q] else MISMATCH_COLOR
            x = GAP + (col + 1) * cell_w
            grid.paste(_framed_thumb(images.gallery_paths[g], thumb, color), (x, y))
    _draw_legend(grid, len(chosen) * cell_h, lines, font)
    _ensure_parent(path)
    grid.save(path, format="PNG")
    return path


def save_cmc_curve(path: str, cmc_by_name: Dict[str, np.ndarray], title: str,
                   size_inches: Tuple[float, float] = (6.0, 4.5), dpi: int = 100,
                   std_by_name: Optional[Dict[str, np.ndarray]] = None) -> str:
    """Write a PNG plot of one or more CMC curves (rank 1..len on x, percent on y), with a legend
    entry per curve (its name and Rank-1).

    Args:
        path: output PNG (parent folders are created).
        cmc_by_name: legend label -> CMC array of fractions in [0, 1] (as returned by
            ``utils.evaluation.metrics``, or their mean over gallery trials); curves may have different lengths.
        title: figure title.
        size_inches, dpi: figure size; the PNG is size_inches * dpi pixels (600 x 450 default).
        std_by_name: optional label -> standard deviation over gallery trials (same length as the
            curve), drawn as a shaded band of ±1 std (the legend says so).

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
        std = None if std_by_name is None or name not in std_by_name else \
            np.asarray(std_by_name[name], dtype=np.float64).reshape(-1)
        if std is not None and std.shape != cmc.shape:
            raise ValueError(f"std of CMC curve {name!r} has {std.size} values, the curve {cmc.size}")
        band = std is not None and bool(std.any())
        line, = ax.plot(ranks, 100.0 * cmc, marker="o", markersize=3,
                        label=f"{name} (R1 {100.0 * cmc[0]:.1f}%{', band: ±1 std' if band else ''})")
        if band:
            ax.fill_between(ranks, 100.0 * (cmc - std), 100.0 * (cmc + std), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    _ensure_parent(path)
    canvas.print_png(path)
    return path


__all__ = ["SplitImages", "save_rank_grid", "save_cmc_curve", "legend_items", "FRAME", "GAP", "LINE_H", "SWATCH",
           "MATCH_COLOR", "MISMATCH_COLOR", "QUERY_COLOR", "BACKGROUND", "REMOVAL_TEXT"]
