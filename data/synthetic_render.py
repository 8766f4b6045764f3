"""Image drawing for the synthetic visible-infrared re-ID data (see :mod:`data.synthetic`).

A person is drawn from an :class:`Identity`: body shape, clothing pattern and accessories survive in
infrared; garment colours exist only in visible images. Infrared intensities of the garments are separate
identity attributes (independent of hue, only weakly tied to lightness), so grayscale is no shortcut.
A :class:`Camera` fixes background and lighting, a :class:`Pose` the per-image nuisance; :func:`render`
draws one image. Every random draw comes from the generator passed in, so callers control the streams.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

PARTS = ("upper", "lower", "skin", "hair", "shoes", "hat", "pack", "bag")
IR_LIGHTNESS = 0.35    # weight of visible lightness in a garment's infrared intensity


@dataclass
class Identity:
    """Fixed appearance of one person. Lengths are in units of body height."""

    gender: str
    height: float          # body height as a fraction of the image height
    head: float
    shoulder: float
    waist: float           # hip width / shoulder width
    leg: float
    sleeve: float          # sleeve length as a fraction of the arm
    trousers: float        # lower-garment length as a fraction of the leg
    long_hair: bool
    hat: bool
    backpack: bool
    bag_side: int          # -1 / +1: bag on that side, 0: no bag
    patterns: Dict[str, Tuple[int, float, float, float]]  # garment -> (kind, freq, phase, amplitude)
    rgb: Dict[str, np.ndarray]
    ir: Dict[str, float]   # independent of the hue in ``rgb``, weakly tied to its lightness


@dataclass
class Camera:
    """Background and lighting of one camera."""

    ir: bool
    colours: np.ndarray    # (3, 3): wall top, wall bottom, floor
    floor: float
    texture: Tuple[float, float, float]   # amplitude, vertical and horizontal frequency
    clutter: float         # amplitude of vertical bars (outdoor clutter)
    gain: float
    contrast: float
    cast: np.ndarray       # per-channel colour cast (ones for infrared)
    heat: float            # infrared: brightness of the warm body
    noise: float


@dataclass
class Pose:
    """Per-image nuisance: placement, flip, gait, view, lighting, occlusion."""

    dx: float
    dy: float
    scale: float
    flip: int
    gap: float
    swing: float
    back: bool
    light: float
    bg_phase: float
    occluder: Optional[Tuple[str, float, np.ndarray, float]]   # side, fraction, rgb, ir


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def make_identity(rng: np.random.Generator) -> Identity:
    """Draw the appearance of one person."""
    female = rng.random() < 0.4
    u = rng.uniform
    kinds = {"upper": [0.25, 0.25, 0.2, 0.3], "lower": [0.5, 0.15, 0.2, 0.15]}
    patterns = {g: (int(rng.choice(4, p=p)), u(5.0, 16.0), u(0, 2 * np.pi), u(0.2, 0.4))
                for g, p in kinds.items()}
    rgb = {p: _hsv(rng.random(), u(0.3, 1.0), u(0.4, 1.0)) for p in ("upper", "lower", "hat", "pack", "bag")}
    rgb["skin"] = _hsv(u(0.03, 0.1), u(0.25, 0.6), u(0.45, 0.95))
    rgb["hair"] = _hsv(u(0.02, 0.12), u(0.2, 0.7), u(0.05, 0.4))
    rgb["shoes"] = _hsv(rng.random(), u(0, 0.3), u(0.05, 0.35))
    # infrared: warm skin; a garment's intensity is its own attribute, blended only weakly with its
    # visible lightness (fabric reflectance), never with its hue, so grayscale is not a shortcut
    ir = {"skin": u(0.85, 1.0), "hair": u(0.4, 0.6), "shoes": u(0.15, 0.35)}
    ir.update({k: (1 - IR_LIGHTNESS) * u(0.25, 0.85) + IR_LIGHTNESS * (0.2 + 0.6 * float(rgb[k].max()))
               for k in ("upper", "lower", "hat", "pack", "bag")})
    return Identity(gender="female" if female else "male", height=u(0.7, 0.92), head=u(0.1, 0.16),
                    shoulder=u(0.19, 0.33) - 0.02 * female, waist=u(0.65, 1.0), leg=u(0.38, 0.54),
                    sleeve=float(rng.choice([0.35, 1.0])), trousers=float(rng.choice([0.45, 1.0], p=[0.3, 0.7])),
                    long_hair=bool(rng.random() < (0.6 if female else 0.1)), hat=bool(rng.random() < 0.3),
                    backpack=bool(rng.random() < 0.35), bag_side=int(rng.choice([-1, 0, 0, 1])),
                    patterns=patterns, rgb=rgb, ir=ir)


def make_camera(rng: np.random.Generator, ir: bool, outdoor: bool) -> Camera:
    """Draw the background and lighting of one camera (infrared: dark, low texture)."""
    u = rng.uniform
    if ir:
        level = u(0.15, 0.3) if outdoor else u(0.06, 0.16)
        colours = np.array([[level + u(-0.05, 0.05)] * 3, [level] * 3, [level + u(-0.05, 0.05)] * 3])
        cast, clutter, amp = np.ones(3), (u(0.015, 0.035) if outdoor else 0.0), u(0.01, 0.03)
    else:
        val = (0.2, 0.4) if outdoor else (0.15, 0.35)   # darker than most garments
        colours = np.stack([_hsv(rng.random(), u(0.05, 0.5), u(*val)) for _ in range(3)])
        cast, clutter, amp = u(0.85, 1.15, size=3), (u(0.0, 0.06) if outdoor else 0.0), u(0.02, 0.08)
    return Camera(ir=ir, colours=colours.astype(np.float32), floor=u(0.72, 0.9),
                  texture=(amp, u(0.5, 3.0), u(0.5, 3.0)), clutter=clutter, gain=u(0.8, 1.15),
                  contrast=u(0.8, 1.2), cast=cast.astype(np.float32), heat=u(0.85, 1.05) if ir else 1.0,
                  noise=u(0.015, 0.035))


def make_pose(rng: np.random.Generator, height: int, width: int) -> Pose:
    """Draw the per-image nuisance: jitter, flip, gait, view, lighting and (rarely) an occluder."""
    u = rng.uniform
    occluder = None
    if rng.random() < 0.12:
        occluder = (str(rng.choice(["bottom", "left", "right"])), u(0.2, 0.4), u(0.1, 0.9, size=3), u(0.05, 0.5))
    return Pose(dx=u(-0.06, 0.06) * width, dy=u(-0.025, 0.025) * height, scale=u(0.95, 1.05),
                flip=int(rng.choice([-1, 1])), gap=u(0.05, 0.4), swing=u(-0.04, 0.04),
                back=bool(rng.random() < 0.35), light=u(0.85, 1.15),
                bg_phase=u(0, 2 * np.pi), occluder=occluder)


def _pattern(kind: int, freq: float, phase: float, amp: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Luminance modulation of a garment: plain, horizontal/vertical stripes or checks."""
    rows, cols = np.sign(np.sin(2 * np.pi * freq * u + phase)), np.sign(np.sin(2 * np.pi * freq * v + phase))
    wave = (np.zeros_like(u), rows, cols, rows * cols)[kind]
    return 1.0 + amp * wave


def _figure(p: Identity, pose: Pose, U: np.ndarray, V: np.ndarray) -> List[Tuple[str, np.ndarray, Optional[str]]]:
    """Masks of the body in painting order: (colour key, mask, garment pattern or None)."""
    hd, aV = p.head, np.abs(V)
    sh_u, hip_u = hd + 0.025, 1.0 - p.leg
    sw, hw = p.shoulder / 2, p.shoulder * p.waist / 2
    t = np.clip((U - sh_u) / (hip_u - sh_u), 0, 1)
    torso = (U >= sh_u) & (U <= hip_u + 0.03) & (aV <= sw + (hw - sw) * t)
    arm_rel = (U - sh_u - 0.01 - np.sign(V) * pose.swing) / (hip_u + 0.06 - sh_u)   # arms swing in antiphase
    arm = (arm_rel >= 0) & (arm_rel <= 1) & (aV >= sw - 0.01) & (aV <= sw + 0.05)
    leg_rel = (U - hip_u) / (0.975 - hip_u)
    legs = (leg_rel >= 0) & (leg_rel <= 1) & (aV >= pose.gap * hw) & (aV <= hw)
    shoes = (U > 0.975) & (U <= 1.0) & (aV >= pose.gap * hw) & (aV <= hw + 0.012)
    head = ((U - hd / 2) / (hd / 2)) ** 2 + (V / (0.4 * hd)) ** 2 <= 1
    neck = (U >= hd * 0.8) & (U <= sh_u + 0.01) & (aV <= 0.03)
    hair = head & (U < hd * 0.3) if not pose.back else head
    long_hair = (U >= hd * 0.4) & (U <= sh_u + 0.1) & (aV <= 0.5 * hd) if p.long_hair else None
    behind, front = [], []
    if long_hair is not None:
        (front if pose.back else behind).append(("hair", long_hair, None))
    if p.backpack:
        if pose.back:
            front.append(("pack", (U >= sh_u + 0.015) & (U <= sh_u + 0.22) & (aV <= 0.8 * sw), None))
        else:
            behind.append(("pack", (U >= sh_u - 0.035) & (U <= sh_u + 0.2) & (aV <= sw - 0.015), None))
            front.append(("pack", (U >= sh_u) & (U <= sh_u + 0.17) & (aV >= 0.45 * sw) & (aV <= 0.62 * sw), None))
    return (behind + [("lower", legs & (leg_rel <= p.trousers), "lower"), ("skin", legs & (leg_rel > p.trousers), None),
                      ("shoes", shoes, None), ("upper", torso, "upper"), ("upper", arm & (arm_rel <= p.sleeve), "upper"),
                      ("skin", arm & (arm_rel > p.sleeve), None), ("skin", neck, None), ("skin", head, None),
                      ("hair", hair, None)] + front + _accessories(p, U, V, sh_u, hip_u, sw))


def _accessories(p: Identity, U, V, sh_u: float, hip_u: float, sw: float) -> List[Tuple[str, np.ndarray, None]]:
    """Hat (asymmetric brim) and a shoulder bag hanging on one side with a diagonal strap."""
    parts, hd = [], p.head
    if p.hat:
        crown = (U >= -0.015) & (U <= hd * 0.4) & (np.abs(V) <= 0.42 * hd)
        brim = (U >= hd * 0.32) & (U <= hd * 0.42) & (V >= -0.45 * hd) & (V <= 0.8 * hd)
        parts.append(("hat", crown | brim, None))
    if p.bag_side:
        s, end_u = p.bag_side, hip_u - 0.03
        line = -0.6 * sw + (U - sh_u) * (1.6 * sw + 0.07) / (end_u - sh_u)
        strap = (np.abs(V * s - line) < 0.012) & (U >= sh_u) & (U <= end_u)
        bag = (U >= end_u) & (U <= hip_u + 0.1) & (V * s >= sw + 0.03) & (V * s <= sw + 0.11)
        parts += [("bag", strap, None), ("bag", bag, None)]
    return parts


def _background(cam: Camera, pose: Pose, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Wall gradient, floor, a camera-specific texture and (outdoors) vertical clutter bars."""
    t = (Y / Y.shape[0])[..., None]
    wall = cam.colours[0] * (1 - t) + cam.colours[1] * t
    bg = np.where(t > cam.floor, cam.colours[2], wall)
    amp, fy, fx = cam.texture
    yy, xx = Y / Y.shape[0], X / X.shape[1]
    tex = amp * np.sin(2 * np.pi * fy * yy + pose.bg_phase) * np.sin(2 * np.pi * fx * xx)
    tex += cam.clutter * np.sign(np.sin(2 * np.pi * (3 + 2 * fx) * xx + 0.3 * pose.bg_phase))
    return bg + tex[..., None]


def _occlude(img: np.ndarray, pose: Pose, ir: bool) -> None:
    side, frac, rgb, level = pose.occluder
    H, W = img.shape[:2]
    region = {"bottom": (slice(int(H * (1 - frac)), H), slice(None)),
              "left": (slice(None), slice(0, int(W * frac))), "right": (slice(None), slice(int(W * (1 - frac)), W))}
    img[region[side]] = level if ir else rgb


def render(person: Identity, cam: Camera, pose: Pose, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Draw one (height, width, 3) uint8 image; infrared images have three (nearly) equal channels."""
    Y, X = np.mgrid[0:height, 0:width].astype(np.float32) + 0.5
    img = _background(cam, pose, Y, X).astype(np.float32)
    body = height * person.height * pose.scale
    U = (Y - (height - body) / 2 - pose.dy) / body
    V = pose.flip * (X - width / 2 - pose.dx) / body
    mods = {g: _pattern(*person.patterns[g], U - (person.head if g == "upper" else 1 - person.leg), V)
            for g in ("upper", "lower")}
    palette = {k: (np.full(3, person.ir[k] * cam.heat) if cam.ir else person.rgb[k]) for k in PARTS}
    for key, mask, mod in _figure(person, pose, U, V):
        img[mask] = palette[key] if mod is None else palette[key] * mods[mod][mask][:, None]
    if pose.occluder is not None:
        _occlude(img, pose, cam.ir)
    img = ((img * cam.cast - 0.5) * cam.contrast + 0.5) * cam.gain * pose.light
    if cam.ir:  # one-channel sensor, slightly soft optics
        g = np.pad(img.mean(axis=2), 1, mode="edge")
        g = sum(g[i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9.0
        img = (g + rng.normal(0, cam.noise, g.shape))[..., None] + rng.normal(0, 0.002, (height, width, 3))
        # the tiny per-channel term mimics the real files, whose three channels differ very slightly
    else:
        img = img + rng.normal(0, cam.noise, img.shape)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
