"""Drawing the mini dataset's 180x180 pictures: category looks, product views, covers, labels.

A level-1 group has a Family (shapes, palette, backgrounds, patterns); each of its level-3
categories draws a Look from that family, so categories of one group resemble each other and
confusions stay mostly inside the group. A product jitters its category's Look, then each of
its images is a view of it: the first a full view, later ones zooms, other angles or details.
Books, CDs and DVDs are covers instead: the layout tells the group, a printed title tells the
category (mini/covers.py). Every function takes an explicit numpy Generator, so a seed fixes
every pixel.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from common.images import TILE

def font_path() -> Path:
    """matplotlib's bundled DejaVu Sans Bold (imported here only: the pipeline graph loads this package on machines without matplotlib)."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
SHIFT = 4  # cv2 fixed-point bits: sub-pixel polygon vertices
Rgb = tuple[float, float, float]


# ---------------------------------------------------------------------------------------------
# shapes: unit polygons (outer, hole) in [-1, 1], placed by centre, half-size and angle


def _superellipse(p: float, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    return np.stack([np.sign(c) * np.abs(c) ** (2 / p), np.sign(s) * np.abs(s) ** (2 / p)], 1)


def _star(points: int, inner: float) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False) - np.pi / 2
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _ngon(n: int) -> np.ndarray:
    return _star(n, 1.0)[::2] if n % 2 else _star(n // 2, 1.0)


_ARM = 0.35
SHAPES: dict[str, tuple[np.ndarray, np.ndarray | None]] = {
    "rect": (np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), None),
    "rounded": (_superellipse(6), None),
    "ellipse": (_superellipse(2), None),
    "tri": (_ngon(3), None),
    "hex": (_star(3, 1.0), None),
    "star": (_star(5, 0.45), None),
    "cross": (np.array([[-_ARM, -1], [_ARM, -1], [_ARM, -_ARM], [1, -_ARM], [1, _ARM], [_ARM, _ARM],
                        [_ARM, 1], [-_ARM, 1], [-_ARM, _ARM], [-1, _ARM], [-1, -_ARM], [-_ARM, -_ARM]], float), None),
    "L": (np.array([[-1, -1], [-0.2, -1], [-0.2, 0.3], [1, 0.3], [1, 1], [-1, 1]], float), None),
    "ring": (_superellipse(2), 0.6 * _superellipse(2)),
}


def _place(unit: np.ndarray, center: tuple[float, float], half: tuple[float, float], angle: float) -> np.ndarray:
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = (unit * np.asarray(half)) @ rot.T + np.asarray(center)
    return np.round(pts * (1 << SHIFT)).astype(np.int32)


def shape_mask(shape: str, center: tuple[float, float], half: tuple[float, float], angle: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one placed shape on a TILE x TILE canvas."""
    outer, hole = SHAPES[shape]
    mask = np.zeros((TILE, TILE), np.uint8)
    cv2.fillPoly(mask, [_place(outer, center, half, angle)], 255, cv2.LINE_AA, SHIFT)
    if hole is not None:
        cv2.fillPoly(mask, [_place(hole, center, half, angle)], 0, cv2.LINE_AA, SHIFT)
    return mask.astype(np.float32) / 255


def paint(canvas: np.ndarray, alpha: np.ndarray, color: np.ndarray | Rgb) -> None:
    """canvas <- canvas over-painted by `color` (RGB or HxWx3 field) with coverage `alpha`."""
    a = alpha[..., None]
    canvas *= 1 - a
    canvas += a * np.asarray(color, np.float32)


# ---------------------------------------------------------------------------------------------
# colours and textures


def hsv(h: float, s: float, v: float) -> np.ndarray:
    return 255 * np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def jitter_hsv(color: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """The same colour, moved a little in hue / saturation / value (a seller's different shot)."""
    h, s, v = colorsys.rgb_to_hsv(*(np.asarray(color) / 255))
    return hsv(h + rng.normal(0, 0.05 * amount), s + rng.normal(0, 0.12 * amount), v + rng.normal(0, 0.12 * amount))


def texture(kind: str, u: np.ndarray, v: np.ndarray, freq: float, angle: float) -> np.ndarray:
    """Pattern value in [0, 1] at object coordinates (u, v): stripes, dots, checks or rings."""
    if kind == "none":
        return np.zeros_like(u)
    a = np.deg2rad(angle)
    x, y = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
    wave = {
        "stripes": lambda: np.sin(np.pi * freq * x),
        "dots": lambda: np.sin(np.pi * freq * x) * np.sin(np.pi * freq * y) - 0.4,
        "checks": lambda: np.sin(np.pi * freq * x) * np.sin(np.pi * freq * y),
        "rings": lambda: np.sin(np.pi * freq * np.hypot(x, y)),
    }[kind]()
    return np.clip(0.5 + 3 * wave, 0, 1)


_YY, _XX = np.mgrid[0:TILE, 0:TILE].astype(np.float32)


def background(kind: str, color: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A TILE x TILE float canvas: studio white, grey, a gradient, a dark velvet or a room corner."""
    canvas = np.empty((TILE, TILE, 3), np.float32)
    if kind == "white":
        canvas[:] = rng.uniform(236, 255) + rng.normal(0, 3, 3)
    elif kind == "dark":
        canvas[:] = 0.25 * color + rng.uniform(5, 30)
    elif kind == "gradient":
        t = np.clip((_XX * rng.normal() + _YY * rng.normal()) / TILE * 0.7 + 0.5, 0, 1)[..., None]
        canvas[:] = (1 - t) * color + t * (0.35 * color + 160)
    elif kind == "scene":
        horizon = rng.uniform(95, 145)
        canvas[:] = np.where((_YY < horizon)[..., None], 0.5 * color + 110, 0.6 * color + rng.uniform(20, 70))
    else:  # grey
        canvas[:] = 0.2 * color + rng.uniform(130, 190)
    return np.clip(canvas, 0, 255)


# ---------------------------------------------------------------------------------------------
# families (one per level-1 group) and looks (one per category)


@dataclass(frozen=True)
class Family:
    """What the categories of one level-1 group have in common."""

    shapes: tuple[str, ...]
    parts: tuple[str, ...]
    hue: float
    hue_spread: float
    sat: tuple[float, float]
    val: tuple[float, float]
    backgrounds: tuple[str, ...] = ("white",)
    patterns: tuple[str, ...] = ("none", "stripes")
    cover: str | None = None  # "book", "cd", "dvd": media groups draw covers, not objects
    energy_label: bool = False  # appliances: a multi-image product often ends with an EU label


FAMILIES: dict[str, Family] = {
    "LIBRAIRIE": Family(("rect",), ("ellipse", "tri", "star"), 0.08, 0.5, (0.3, 0.8), (0.35, 0.9), cover="book"),
    "MUSIQUE": Family(("rect",), ("ring", "ellipse", "star"), 0.75, 0.5, (0.4, 0.9), (0.2, 0.7), cover="cd"),
    "DVD - BLU-RAY": Family(("rect",), ("tri", "ellipse", "hex"), 0.6, 0.5, (0.3, 0.9), (0.1, 0.5), cover="dvd"),
    "ELECTROMENAGER": Family(("rect", "rounded"), ("ellipse", "rect", "ring"), 0.58, 0.1, (0.0, 0.3),
                             (0.55, 0.95), ("white", "gradient"), ("none", "stripes"), energy_label=True),
    "TELEPHONIE - GPS": Family(("rounded", "rect"), ("rect", "ellipse"), 0.62, 0.3, (0.2, 0.8), (0.15, 0.75),
                               ("white", "grey"), ("none", "stripes", "checks")),
    "INFORMATIQUE": Family(("rect", "hex", "L"), ("rect", "cross"), 0.55, 0.15, (0.0, 0.5), (0.1, 0.6),
                           ("white", "dark", "grey"), ("none", "stripes", "checks")),
    "BIJOUX -  LUNETTES - MONTRES": Family(("ring", "ellipse", "star"), ("star", "ellipse"), 0.12, 0.1, (0.3, 0.9),
                                           (0.55, 1.0), ("dark", "white", "gradient"), ("none", "dots", "rings")),
    "AUTO - MOTO": Family(("ring", "hex", "rect", "tri"), ("ring", "cross"), 0.0, 0.2, (0.0, 0.6), (0.1, 0.55),
                          ("white", "scene"), ("none", "stripes", "checks")),
    "JEUX - JOUETS": Family(("star", "tri", "ellipse", "cross"), ("ellipse", "star", "tri"), 0.0, 0.5, (0.6, 1.0),
                            (0.7, 1.0), ("white", "scene", "gradient"), ("dots", "checks", "stripes", "none")),
    "DECO - LINGE - LUMINAIRE": Family(("tri", "ellipse", "rounded", "rect"), ("ellipse", "rect"), 0.08, 0.15, (0.2, 0.7),
                                       (0.5, 0.95), ("scene", "white"), ("stripes", "dots", "checks", "none")),
    "SPORT": Family(("ellipse", "ring", "rounded"), ("star", "tri", "cross"), 0.3, 0.35, (0.6, 1.0), (0.5, 1.0),
                    ("white", "scene"), ("stripes", "checks", "none")),
    "PUERICULTURE": Family(("ellipse", "rounded", "tri"), ("ellipse", "star"), 0.9, 0.25, (0.15, 0.45), (0.8, 1.0),
                           ("white", "scene"), ("none", "dots", "stripes")),
}
_ALL_BACKGROUNDS = ("white", "grey", "gradient", "dark", "scene")
_ALL_PATTERNS = ("none", "stripes", "dots", "checks", "rings")


def family_for(level1: str, rng: np.random.Generator) -> Family:
    """The hand-written family of a known group, else one drawn at random (presets may add groups)."""
    if level1 in FAMILIES:
        return FAMILIES[level1]
    pick = lambda pool, k: tuple(rng.choice(pool, size=k, replace=False).tolist())  # noqa: E731
    lo_s, lo_v = rng.uniform(0, 0.5), rng.uniform(0.1, 0.6)
    return Family(pick(list(SHAPES), 3), pick(list(SHAPES), 2), rng.uniform(), rng.uniform(0.1, 0.3),
                  (lo_s, lo_s + 0.4), (lo_v, lo_v + 0.4), pick(_ALL_BACKGROUNDS, 2), pick(_ALL_PATTERNS, 2))


@dataclass(frozen=True)
class Look:
    """One category's prototype (or, jittered, one product's appearance)."""

    shape: str
    aspect: float
    color: tuple[float, ...]
    color2: tuple[float, ...]
    pattern: str
    freq: float
    pattern_angle: float
    part: str
    part_at: tuple[float, float]
    part_scale: float
    part_color: tuple[float, ...]
    background: str
    angle: float
    cover: str | None = None
    hue: float = 0.0
    keywords: tuple[str, ...] = ()
    banner: str = ""  # DVD case top bar text ("DVD" / "BLU-RAY")


def _family_color(fam: Family, rng: np.random.Generator, hue: float) -> tuple[float, ...]:
    return tuple(hsv(hue, rng.uniform(*fam.sat), rng.uniform(*fam.val)).tolist())


def make_look(fam: Family, rng: np.random.Generator, keywords: tuple[str, ...] = (), banner: str = "") -> Look:
    """A category prototype drawn from its family: shared shapes and palette, own details."""
    hue = fam.hue + rng.normal(0, fam.hue_spread)
    return Look(
        shape=str(rng.choice(fam.shapes)), aspect=float(np.exp(rng.normal(0, 0.35))),
        color=_family_color(fam, rng, hue), color2=_family_color(fam, rng, hue + rng.normal(0, 0.15)),
        pattern=str(rng.choice(fam.patterns)), freq=float(rng.uniform(3, 9)), pattern_angle=float(rng.uniform(0, 180)),
        part=str(rng.choice(fam.parts)), part_at=tuple(rng.uniform(-0.5, 0.5, 2).tolist()),
        part_scale=float(rng.uniform(0.2, 0.5)), part_color=_family_color(fam, rng, hue + rng.normal(0, 0.3)),
        background=str(rng.choice(fam.backgrounds)),
        angle=float(rng.choice([0, 0, 45, 90])), cover=fam.cover, hue=float(hue), keywords=keywords, banner=banner,
    )


def product_look(look: Look, fam: Family, rng: np.random.Generator, difficulty: float) -> Look:
    """A product of the category: the prototype with its colours and proportions jittered.

    Colour is a weak cue, as in a real catalogue (a phone case comes in every colour): with a
    probability growing with `difficulty` the product takes another colour of its family; shape,
    pattern and part stay the category's. What varies from one picture to the next (pose,
    background, light, clutter) is drawn per view, so later pictures add evidence the first lacks.
    """
    if rng.random() < 0.25 * difficulty:
        hue = fam.hue + rng.normal(0, fam.hue_spread)
        look = replace(look, color=_family_color(fam, rng, hue), color2=_family_color(fam, rng, hue + rng.normal(0, 0.15)))
    j = lambda c: tuple(jitter_hsv(np.asarray(c), rng, 0.3 + 0.7 * difficulty).tolist())  # noqa: E731
    return replace(
        look, color=j(look.color), color2=j(look.color2), part_color=j(look.part_color),
        aspect=look.aspect * float(np.exp(rng.normal(0, 0.15 * difficulty))),
        freq=look.freq * float(np.exp(rng.normal(0, 0.2 * difficulty))),
        hue=look.hue if rng.random() < 0.35 else float(rng.uniform()),
    )


# ---------------------------------------------------------------------------------------------
# object views


@dataclass(frozen=True)
class Pose:
    cx: float
    cy: float
    half: float
    angle: float
    squash: float = 1.0  # < 1: seen from the side


def _clutter(canvas: np.ndarray, rng: np.random.Generator, difficulty: float) -> None:
    """Unrelated small objects around the product (props, packaging, a hand)."""
    for _ in range(rng.poisson(4 * difficulty)):
        half = rng.uniform(8, 30)
        size = (half, half * rng.uniform(0.5, 1.5))
        alpha = shape_mask(str(rng.choice(list(SHAPES))), tuple(rng.uniform(0, TILE, 2)), size, rng.uniform(0, 360))
        paint(canvas, alpha, hsv(rng.uniform(), rng.uniform(0, 1), rng.uniform(0.2, 1)))


def draw_object(canvas: np.ndarray, look: Look, pose: Pose) -> None:
    """Paint the product (main shape, pattern, shading, part) at `pose` onto `canvas`."""
    sx, sy = pose.half * np.sqrt(look.aspect), pose.half / np.sqrt(look.aspect) * pose.squash
    angle = look.angle + pose.angle
    a = np.deg2rad(angle)
    dx, dy = _XX - pose.cx, _YY - pose.cy
    u = (dx * np.cos(a) + dy * np.sin(a)) / sx
    v = (-dx * np.sin(a) + dy * np.cos(a)) / sy
    t = texture(look.pattern, u, v, look.freq, look.pattern_angle)[..., None]
    shade = (1 + 0.12 * (u - v)).clip(0.7, 1.3)[..., None]
    field = ((1 - t) * np.asarray(look.color, np.float32) + t * np.asarray(look.color2, np.float32)) * shade
    paint(canvas, shape_mask(look.shape, (pose.cx, pose.cy), (sx, sy), angle), field.clip(0, 255))
    pu, pv = look.part_at
    px = pose.cx + pu * sx * np.cos(a) - pv * sy * np.sin(a)
    py = pose.cy + pu * sx * np.sin(a) + pv * sy * np.cos(a)
    ph = look.part_scale * min(sx, sy)
    paint(canvas, shape_mask(look.part, (px, py), (ph, ph), angle), look.part_color)


def random_pose(rng: np.random.Generator, difficulty: float, zoom: float = 1.0) -> Pose:
    half = TILE / 2 * rng.uniform(0.5, 0.78) * float(np.exp(rng.normal(0, 0.15 * difficulty))) * zoom
    shift = 8 + 25 * difficulty + 30 * (zoom - 1)
    return Pose(TILE / 2 + rng.uniform(-shift, shift), TILE / 2 + rng.uniform(-shift, shift), half,
                rng.normal(0, 8 + 35 * difficulty))


def lighting(canvas: np.ndarray, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """Exposure and white balance of one shot."""
    gain = np.exp(rng.normal(0, 0.5 * difficulty) + rng.normal(0, 0.2 * difficulty, 3)).astype(np.float32)
    return (canvas * gain).clip(0, 255)


def object_view(look: Look, kind: str, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """One picture of an object product. `kind`: full, zoom, angle or detail (ordered by information)."""
    usual = kind == "full" and rng.random() > 0.5 + 0.6 * difficulty  # sellers shoot on many backdrops
    bg = look.background if usual else str(rng.choice(_ALL_BACKGROUNDS))
    canvas = background(bg, hsv(rng.uniform(), rng.uniform(0, 0.5), rng.uniform(0.4, 0.9)), rng)
    if kind in ("full", "angle"):
        _clutter(canvas, rng, difficulty)
    pose = random_pose(rng, difficulty, zoom={"full": 1.0, "angle": 0.85, "zoom": 1.5, "detail": 2.5}[kind])
    if kind == "angle":
        pose = replace(pose, angle=pose.angle + rng.uniform(-25, 25), squash=rng.uniform(0.7, 0.95))
    draw_object(canvas, look, pose)
    if rng.random() < 0.7 * difficulty:  # something in front of the product
        _clutter(canvas, rng, 0.4)
    return lighting(canvas, rng, difficulty)
