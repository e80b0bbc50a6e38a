"""Drawing book / CD / DVD covers (the group's layout, the category's printed French title), the EU
energy label, the "no photo" placeholder, and the final JPEG encoding of every picture."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.images import TILE, encode_jpeg

from .render import FAMILIES, SHAPES, Look, background, font_path, hsv, paint, shape_mask


# ---------------------------------------------------------------------------------------------
# covers (books, CDs, DVDs): group layout, category title


COVER_BOX = {"book": (0.70, 114, 166), "cd": (1.0, 140, 140), "dvd": (0.72, 118, 164)}  # aspect, width, max height


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), size)


def fit_font(draw: ImageDraw.ImageDraw, lines: list[str], width: int, start: int = 24, smallest: int = 13) -> ImageFont.FreeTypeFont:
    """The largest font (<= start px) at which every line fits in `width` px."""
    for size in range(start, smallest - 1, -1):
        if max(draw.textlength(line, font=font(size)) for line in lines) <= width:
            return font(size)
    return font(smallest)


def draw_title(img: Image.Image, x0: int, x1: int, y: int, words: list[str], rng: np.random.Generator, below: bool = True) -> None:
    """A light band from x0 to x1 with one dark word per line; it starts at y (below) or ends there.

    The band spans the whole cover width and sits flush with a cover edge so it touches the white
    page around: an inset band on a dark cover is taken by tesseract's layout analysis for a
    picture, not for text (measured: most such titles come back empty).
    """
    draw = ImageDraw.Draw(img)
    f = fit_font(draw, words, x1 - x0 - 10, start=int(rng.integers(20, 26)))
    line_h = int(f.size * 1.25)
    height = line_h * len(words) + 14
    top = y if below else y - height
    draw.rectangle((x0, top, x1, top + height), fill=tuple(int(c) for c in rng.uniform(228, 255, 3)))
    ink = tuple(int(c) for c in rng.uniform(0, 45, 3))
    for k, word in enumerate(words):
        w = draw.textlength(word, font=f)
        draw.text(((x0 + x1 - w) / 2, top + 7 + k * line_h), word, font=f, fill=ink)


def _cover_art(canvas: np.ndarray, look: Look, rng: np.random.Generator, area: tuple[float, float, float, float]) -> None:
    """Abstract artwork in `area` (x0, y0, x1, y1): a few shapes, one of them the category's."""
    x0, y0, x1, y1 = area
    for k in range(int(rng.integers(2, 5))):
        shape = look.part if k == 0 else str(rng.choice(list(SHAPES)))
        half = rng.uniform(0.15, 0.35) * (x1 - x0)
        center = (rng.uniform(x0 + half / 2, x1 - half / 2), rng.uniform(y0 + half / 2, y1 - half / 2))
        color = hsv(rng.uniform(), rng.uniform(0.3, 1), rng.uniform(0.3, 1))
        paint(canvas, shape_mask(shape, center, (half, half), rng.uniform(0, 360)), color)


def cover_geometry(look: Look, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the cover on the 180x180 picture."""
    aspect, width, max_h = COVER_BOX[look.cover]
    w = int(width + rng.integers(-6, 7))
    h = min(int(w / aspect), max_h)
    x0 = (TILE - w) // 2 + int(rng.integers(-4, 5))
    y0 = (TILE - h) // 2 + int(rng.integers(-3, 4))
    return x0, y0, x0 + w, y0 + h


def cover_front(look: Look, words: list[str], rng: np.random.Generator) -> np.ndarray:
    """The front cover: group layout (book / CD case / DVD case), art, and the title band."""
    canvas = background("white", np.zeros(3, np.float32), rng)
    x0, y0, x1, y1 = cover_geometry(look, rng)
    fam = FAMILIES[{"book": "LIBRAIRIE", "cd": "MUSIQUE", "dvd": "DVD - BLU-RAY"}[look.cover]]
    canvas[y0:y1, x0:x1] = hsv(look.hue, rng.uniform(*fam.sat), rng.uniform(*fam.val))
    if look.cover == "cd":  # jewel-case hinge on the left, title at the bottom
        canvas[y0:y1, x0 : x0 + 10] = rng.uniform(40, 90)
    elif look.cover == "dvd":  # a dark bottom bar with the format name
        canvas[y1 - 16 : y1, x0:x1] = (20, 40, 120) if look.banner == "BLU-RAY" else (15, 15, 15)
    _cover_art(canvas, look, rng, (x0, y0, x1, y1) if look.cover == "cd" else (x0, y0 + 50, x1, y1))
    img = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    if look.cover == "dvd":
        ImageDraw.Draw(img).text((x0 + 4, y1 - 14), look.banner, font=font(11), fill=(235, 235, 235))
    draw_title(img, x0 + (10 if look.cover == "cd" else 0), x1, y0, words, rng)
    return np.asarray(img, np.float32).copy()


def cover_back(look: Look, rng: np.random.Generator) -> np.ndarray:
    """Back cover: blurb lines and a barcode, the same for every category of the group."""
    canvas = background("white", np.zeros(3, np.float32), rng)
    x0, y0, x1, y1 = cover_geometry(look, rng)
    canvas[y0:y1, x0:x1] = hsv(look.hue, 0.3, 0.85)
    for y in range(y0 + 12, y1 - 45, 9):
        canvas[y : y + 4, x0 + 8 : x1 - 8 - int(rng.integers(0, 40))] = 60
    bx, by = x1 - 58, y1 - 36
    canvas[by : by + 28, bx : bx + 50] = 255
    for x in range(bx + 3, bx + 47, 2):
        if rng.random() < 0.55:
            canvas[by + 3 : by + 25, x] = 0
    return canvas


def disc(look: Look, rng: np.random.Generator) -> np.ndarray:
    """The CD / DVD itself (books: an open page spread)."""
    canvas = background("white", np.zeros(3, np.float32), rng)
    c = (TILE / 2 + rng.uniform(-6, 6), TILE / 2 + rng.uniform(-6, 6))
    if look.cover == "book":
        for dx in (-1, 1):
            paint(canvas, shape_mask("rect", (c[0] + dx * 40, c[1]), (38, 60), 0), (248, 246, 238))
            for y in range(int(c[1]) - 50, int(c[1]) + 50, 7):
                canvas[y : y + 2, int(c[0] + dx * 40 - 30) : int(c[0] + dx * 40 + 30)] = 90
        return canvas
    paint(canvas, shape_mask("ellipse", c, (80, 80), 0), (200, 200, 205))
    paint(canvas, shape_mask("ring", c, (70, 70), 0), hsv(look.hue, 0.6, 0.7))
    paint(canvas, shape_mask("ellipse", c, (10, 10), 0), (250, 250, 250))
    return canvas


def zoom_crop(rgb: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """A close-up of part of an existing picture (a detail shot of the same cover)."""
    size = int(TILE / factor)
    x, y = rng.integers(0, TILE - size + 1, 2)
    return cv2.resize(rgb[y : y + size, x : x + size], (TILE, TILE), interpolation=cv2.INTER_LINEAR)


def tilted(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same picture photographed at an angle on a table."""
    src = np.float32([[0, 0], [TILE, 0], [TILE, TILE], [0, TILE]])
    dst = src + rng.uniform(-15, 15, (4, 2)).astype(np.float32)
    m = cv2.getPerspectiveTransform(src, dst)
    floor = background(str(rng.choice(["white", "grey"])), hsv(rng.uniform(), 0.2, 0.8), rng)
    return cv2.warpPerspective(rgb, m, (TILE, TILE), dst=floor, borderMode=cv2.BORDER_TRANSPARENT)


def cover_views(look: Look, words: list[str], kinds: list[str], rng: np.random.Generator) -> list[np.ndarray]:
    front = cover_front(look, words, rng)
    make = {"full": lambda: front, "zoom": lambda: zoom_crop(front, rng, rng.uniform(1.2, 1.6)),
            "angle": lambda: tilted(front, rng), "detail": lambda: (cover_back if rng.random() < 0.5 else disc)(look, rng)}
    return [make[k]() for k in kinds]


# ---------------------------------------------------------------------------------------------
# generic pictures: the EU energy label and the "no photo" placeholder


ENERGY_COLORS = [(0, 150, 64), (80, 180, 50), (190, 215, 40), (255, 240, 0), (250, 185, 0), (235, 100, 30), (225, 30, 30)]


def _arrow(start: float, end: float, y: float, height: float) -> list[tuple[float, float]]:
    """A horizontal band from `start` to `end` with a pointed tip beyond `end` (either direction)."""
    tip = end + (6 if end > start else -7)
    return [(start, y), (end, y), (tip, y + height / 2), (end, y + height), (start, y + height)]


def energy_label(rng: np.random.Generator) -> np.ndarray:
    """An EU energy label: the same for every appliance, only the class arrow and framing move."""
    canvas = background("white", np.zeros(3, np.float32), rng)
    x0, y0 = 38 + rng.uniform(-2, 2), 8 + rng.uniform(-2, 2)
    w, h = 104, 164
    img = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.rectangle((x0, y0, x0 + w, y0 + h), outline=(0, 0, 0), width=2)
    draw.rectangle((x0 + 2, y0 + 2, x0 + w - 2, y0 + 22), fill=(0, 80, 160))
    draw.text((x0 + 8, y0 + 5), "ENERG", font=font(13), fill=(255, 255, 255))
    arrow = int(rng.integers(0, 7))
    for k, color in enumerate(ENERGY_COLORS):
        y = y0 + 30 + 15 * k
        draw.polygon(_arrow(x0 + 6, x0 + 30 + 7 * k, y, 12), fill=color)
        draw.text((x0 + 9, y), "ABCDEFG"[k], font=font(11), fill=(255, 255, 255))
        if k == arrow:
            draw.polygon(_arrow(x0 + w - 6, x0 + w - 30, y - 1, 14), fill=(0, 0, 0))
    draw.text((x0 + 8, y0 + h - 20), "kWh/annum", font=font(10), fill=(0, 0, 0))
    return np.asarray(img, np.float32).copy()


def placeholder() -> np.ndarray:
    """The grey 'PHOTO NON DISPONIBLE' picture sellers upload when they have no photo."""
    img = Image.new("RGB", (TILE, TILE), (224, 224, 224))
    draw = ImageDraw.Draw(img)
    draw.rounded_rectangle((55, 40, 125, 90), radius=8, fill=(170, 170, 170))
    draw.ellipse((75, 50, 105, 80), fill=(224, 224, 224))
    draw.ellipse((81, 56, 99, 74), fill=(150, 150, 150))
    for k, line in enumerate(("PHOTO NON", "DISPONIBLE")):
        w = draw.textlength(line, font=font(16))
        draw.text(((TILE - w) / 2, 108 + 22 * k), line, font=font(16), fill=(120, 120, 120))
    return np.asarray(img, np.float32).copy()


def finish(canvas: np.ndarray, rng: np.random.Generator, difficulty: float, quality: int) -> bytes:
    """Sensor noise, then a JPEG at the seller's quality."""
    noisy = canvas + rng.normal(0, 1 + 4 * difficulty, canvas.shape).astype(np.float32)
    return encode_jpeg(noisy.clip(0, 255).astype(np.uint8), quality)


@lru_cache(maxsize=1)
def placeholder_jpeg() -> bytes:
    """ONE byte string for every placeholder in both files (so an MD5 dictionary can spot it)."""
    return encode_jpeg(placeholder().astype(np.uint8), 90)
