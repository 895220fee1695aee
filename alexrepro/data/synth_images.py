"""Drawing and encoding the images of `alexrepro synth`: classes of shape, texture and layout, never colour.

Each class is a family (`class_family`): one of 8 shapes, one of 10 textures (patterns in the
object's own coordinates: stripes, checks, dots, rings, speckles ...) and a layout (one object, a pair
or a row of three). Everything else is drawn independently of the class: the object's colours, the
background, the 1–3 smaller plain distractor shapes, the lighting, the scale (the object's area, not
its radius, so no shape covers more pixels than another), the position, the rotation and the
squash; a fifth of the images are greyscale. The object's two colours (fill and texture) differ in luminance from each
other and from the background around the object, and they are exchangeable (`colour_pair`), so every
class reads the same in grey and no texture shifts the colour statistics. Colour statistics
therefore say nothing about the class: a colour-histogram classifier stays near chance
(`tests/test_synth_images.py`), and a net must learn edges, corners and texture to get above it.
All drawing is vectorised numpy on float32 arrays; an image of about 450×340 takes a few ms.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from alexrepro.data.options import DEFAULT_MAX_SIZE, DEFAULT_MIN_SIZE

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent")
# Ten patterns chosen to differ locally (a small receptive field tells them apart): no edge inside,
# parallel bands, squares, spots, crossing lines, irregular patches, concentric bands, random cells, an
# inner outline, one straight edge.
TEXTURES = ("plain", "stripes", "checker", "dots", "blotches", "rings", "grid", "speckles", "frame", "split")
TEXTURE_WORDS = {"plain": "plain", "stripes": "striped", "checker": "checkered", "dots": "dotted",
                 "blotches": "blotched", "rings": "ringed", "grid": "latticed", "speckles": "speckled",
                 "frame": "framed", "split": "split"}
LAYOUTS = ("single", "pair", "row")  # one object; two copies side by side; three in a row
LAYOUT_COPIES = {"single": 1, "pair": 2, "row": 3}
LAYOUT_WORDS = {"single": "", "pair": "pair of ", "row": "row of three "}
# Class c has shape c mod 8 and texture c mod 10, so classes 0..39 all have a different (shape, texture)
# pair and the first ten differ in texture (and all but two pairs in shape too); the layout changes
# every 40 classes. Classes c and c + DISTINCT_FAMILIES share a family.
PAIRS = math.lcm(len(SHAPES), len(TEXTURES))
DISTINCT_FAMILIES = PAIRS * len(LAYOUTS)

GREYSCALE_P = 0.2  # fraction of images drawn without colour
OBJECT_RADIUS = (0.25, 0.4)  # radius of a disc of the object's area, as a fraction of the shorter side
DISTRACTOR_RADIUS = (0.05, 0.1)
# Distractors are plain: no other shape in the scene carries a class's pattern, so the texture that
# names the class is the object's (their shapes, sizes and colours still vary, as clutter).
DISTRACTOR_TEXTURES = ("plain",)
MIN_CONTRAST = 60.0  # luminance steps (of 255) between fill and background, and fill and texture colour
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, what PIL's "L" conversion uses

# Image sides, in px: drawn on DEFAULT_MIN_SIZE–DEFAULT_MAX_SIZE (data/options.py), then remapped onto
# --min-size/--max-size. Most ImageNet photos are about 500×375 or 500×333; a tail runs from ~100 px
# thumbnails to multi-megapixel scans.
TYPICAL_LONG_SIDE = (400, 500)
ASPECTS = (4 / 3, 3 / 2, 1.0, 5 / 4, 16 / 9)
ASPECT_P = (0.45, 0.3, 0.1, 0.08, 0.07)
JPEG_QUALITY = 90  # about what ImageNet's Flickr JPEGs carry
TEXT_BODY = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


@dataclass(frozen=True)
class ClassFamily:
    """What every image of one class shows: a shape, a texture and a layout (no colour)."""

    shape: str
    texture: str
    layout: str = "single"

    def description(self) -> str:
        """Words for the family, e.g. 'striped square' or 'pair of dotted stars'."""
        noun = self.shape + ("es" if self.shape.endswith("s") else "s") if self.layout != "single" else self.shape
        return f"{LAYOUT_WORDS[self.layout]}{TEXTURE_WORDS[self.texture]} {noun}"

    def as_dict(self) -> dict[str, str]:
        return {"shape": self.shape, "texture": self.texture, "layout": self.layout,
                "description": self.description()}


def class_family(index: int) -> ClassFamily:
    """The family of class `index` (sorted-WNID order); the same for every seed."""
    return ClassFamily(SHAPES[index % len(SHAPES)], TEXTURES[index % len(TEXTURES)],
                       LAYOUTS[(index // PAIRS) % len(LAYOUTS)])


def sample_size(rng: np.random.Generator, min_size: int = DEFAULT_MIN_SIZE,
                max_size: int = DEFAULT_MAX_SIZE) -> tuple[int, int]:
    """An ImageNet-like (width, height): mostly 400–500 × 270–375, with a small and a large tail.

    Sides are drawn on the default 100–2000 px range and then mapped geometrically onto
    [min_size, max_size] (the identity for the defaults), so smaller test sets keep the shape
    of the distribution. Every side ends up within [min_size, max_size].
    """
    u = rng.random()
    lo, hi = DEFAULT_MIN_SIZE, DEFAULT_MAX_SIZE
    if u < 0.85:
        long_side = rng.uniform(*TYPICAL_LONG_SIDE)
    elif u < 0.95:
        long_side = math.exp(rng.uniform(math.log(lo), math.log(TYPICAL_LONG_SIDE[0])))
    else:
        long_side = math.exp(rng.uniform(math.log(TYPICAL_LONG_SIDE[1]), math.log(hi)))
    aspect = ASPECTS[rng.choice(len(ASPECTS), p=ASPECT_P)] * rng.uniform(0.97, 1.03)
    short_side = long_side / aspect

    def remap(side: float) -> int:
        frac = math.log(max(side, lo) / lo) / math.log(hi / lo)
        return int(round(min(max(min_size * (max_size / min_size) ** frac, min_size), max_size)))

    w, h = remap(long_side), remap(short_side)
    return (h, w) if rng.random() < 0.25 else (w, h)  # a quarter are portrait


def hsv_rgb(h: float, s: float, v: float) -> np.ndarray:
    """An HSV colour (all in [0, 1]) as float32 RGB on the 0–255 scale."""
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """Any hue, saturation and value: the class never chooses a colour."""
    return hsv_rgb(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.1, 1.0))


def with_luma(colour: np.ndarray, luma: float) -> np.ndarray:
    """`colour` darkened (scaled) or lightened (blended towards white) to the given luminance, hue kept."""
    current = float(colour @ LUMA)
    if current > luma:
        return colour * np.float32(luma / current)
    t = (luma - current) / max(255.0 - current, 1e-6)
    return colour + np.float32(t) * (np.float32(255.0) - colour)


def colour_pair(rng: np.random.Generator, ground: float | None = None,
                margin: float = MIN_CONTRAST) -> tuple[np.ndarray, np.ndarray]:
    """Two colours of any hue whose luminances differ by at least `margin`, and from `ground` too.

    The luminances are drawn uniformly from what the margins allow and then put in a random order,
    so the two colours are exchangeable: a texture that shows 30% of the second colour and a plain
    fill give the same colour statistics on average, and only the pattern differs.
    """
    grid = np.arange(256, dtype=np.float64)
    allowed = np.ones(256, bool) if ground is None else np.abs(grid - ground) >= margin
    first = float(rng.choice(grid[allowed]))
    second = float(rng.choice(grid[allowed & (np.abs(grid - first) >= margin)]))
    if rng.random() < 0.5:
        first, second = second, first
    return with_luma(random_colour(rng), first), with_luma(random_colour(rng), second)


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance-like field of a shape of radius 1 at the origin (< 0 inside)."""
    r = np.hypot(u, v)
    if shape == "disc":
        return r - 1.0
    if shape == "ring":
        return np.maximum(r - 1.0, 0.55 - r)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.8
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return np.minimum(np.maximum(au - 0.32, av - 0.95), np.maximum(av - 0.32, au - 0.95))
    if shape == "crescent":
        return np.maximum(r - 1.0, 0.8 - np.hypot(u - 0.45, v))
    theta = np.arctan2(v, u)
    if shape in ("triangle", "hexagon"):
        k = 3 if shape == "triangle" else 6
        sector = 2 * math.pi / k
        return r * np.cos(np.mod(theta, sector) - sector / 2) - math.cos(math.pi / k)
    if shape == "star":
        t = np.mod(theta * 5 / (2 * math.pi), 1.0)
        return r - (0.42 + 0.58 * np.abs(2 * t - 1))
    raise ValueError(f"unknown shape {shape!r}")


@cache
def unit_area(shape: str) -> float:
    """Area of a shape of radius 1 (a disc: π), measured on a fine grid; scales keep areas equal."""
    g = (np.arange(1024, dtype=np.float64) + 0.5) / 1024 * 2.6 - 1.3
    inside = shape_distance(shape, g[None, :], g[:, None]) < 0
    return float(inside.mean() * 2.6 * 2.6)


def texture_mix(texture: str, shape: str, u: np.ndarray, v: np.ndarray, waves: np.ndarray) -> np.ndarray | None:
    """How much of the second colour each pixel takes (0..1), or None for a plain fill.

    Every pattern lives in the object's own coordinates (radius 1), so it scales and turns with
    the object and survives prep's downscaling to 256 px. `waves` (3×3 numbers drawn per object:
    frequency, angle, phase) shapes the blotches and seeds the speckles.
    """
    if texture == "plain":
        return None
    if texture == "stripes":
        return (np.sin(u * 3.5 * math.pi) > 0).astype(np.float32)
    if texture == "checker":
        return (np.mod(np.floor(u * 3) + np.floor(v * 3), 2)).astype(np.float32)
    if texture == "dots":
        fu, fv = np.mod(u * 3, 1.0) - 0.5, np.mod(v * 3, 1.0) - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    if texture == "blotches":  # three crossing long waves: irregular patches about half the radius across
        total = sum(np.sin(f * 0.6 * (math.cos(a) * u + math.sin(a) * v) + p) for f, a, p in waves)
        return (total > 0).astype(np.float32)
    if texture == "rings":  # concentric about the object's centre
        return (np.sin(np.hypot(u, v) * 3.5 * math.pi) > 0).astype(np.float32)
    if texture == "grid":  # lines a fifth of a cell wide
        return ((np.mod(u * 2.5, 1.0) < 0.22) | (np.mod(v * 2.5, 1.0) < 0.22)).astype(np.float32)
    if texture == "speckles":  # cells a sixth of the radius across, each on with probability ~0.4
        i, j = np.floor(u * 6), np.floor(v * 6)
        noise = np.mod(np.sin(i * 12.9898 + j * 78.233 + float(waves[0, 2])) * 43758.5453, 1.0)
        return (noise < 0.4).astype(np.float32)
    if texture == "frame":  # the shape again at 0.6 of the size inside: an outlined shape
        return (shape_distance(shape, u / 0.6, v / 0.6) < 0).astype(np.float32)
    if texture == "split":  # one straight edge through the middle
        return (u > 0).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def draw_shape(img: np.ndarray, rng: np.random.Generator, shape: str, texture: str, centre: tuple[float, float],
               radius: float, colour: np.ndarray, second: np.ndarray) -> tuple[int, int, int, int] | None:
    """Paint one rotated, squashed, textured shape into the 3×H×W `img` in place; its pixel box or None."""
    h, w = img.shape[1:]
    cx, cy = centre
    phi = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.8, 1.2)
    waves = np.stack([rng.uniform(7.0, 11.0, 3), rng.uniform(0, 2 * math.pi, 3), rng.uniform(0, 2 * math.pi, 3)], 1)
    reach = radius * 1.3
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, w)
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    c, s = math.cos(phi), math.sin(phi)
    u = (c * dx + s * dy) / (radius * squash)
    v = (c * dy - s * dx) * (squash / radius)
    dist = shape_distance(shape, u, v)
    alpha = np.clip(0.5 - dist * radius, 0.0, 1.0)  # about one pixel of anti-aliased edge
    mix = texture_mix(texture, shape, u, v, waves)
    for k in range(3):  # channel planes: 2-D numpy ops are far faster than broadcasting over RGB
        fill = colour[k] if mix is None else colour[k] + mix * (second[k] - colour[k])
        plane = img[k, y0:y1, x0:x1]
        plane += alpha * (fill - plane)
    rows, cols = np.nonzero(alpha.max(axis=1) >= 0.5)[0], np.nonzero(alpha.max(axis=0) >= 0.5)[0]
    if rows.size == 0:
        return None
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]), y0 + int(rows[-1]))


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A two-colour linear gradient at a random angle plus grey pixel noise, float32 3×H×W."""
    ca = hsv_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.95))
    cb = hsv_rgb(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.15, 0.95))
    ang = rng.uniform(0, 2 * math.pi)
    tx = np.linspace(0, math.cos(ang), w, dtype=np.float32)[None, :]
    ty = np.linspace(0, math.sin(ang), h, dtype=np.float32)[:, None]
    t = tx + ty
    t -= t.min()
    t /= max(float(t.max()), 1e-6)
    # Uniform noise from raw bytes (int8, std ≈ 74 × amp/128): ten times cheaper than normals.
    noise = np.frombuffer(rng.bytes(h * w), dtype=np.int8).reshape(h, w).astype(np.float32)
    noise *= np.float32(rng.uniform(3.0, 15.0) / 128)
    img = np.empty((3, h, w), dtype=np.float32)
    for k in range(3):
        np.multiply(t, cb[k] - ca[k], out=img[k])
        img[k] += noise
        img[k] += ca[k]
    return img


def layout_centres(rng: np.random.Generator, layout: str, w: int, h: int, radius: float) -> list[tuple[float, float]]:
    """Centres of the object's copies: one, or two/three in a line at a random angle, kept inside the image."""
    n = LAYOUT_COPIES[layout]
    angle = rng.uniform(0, math.pi)
    step = 2.3 * radius  # copies never touch (the widest shape reaches 1.3 radii with squash)
    offsets = [((i - (n - 1) / 2) * step * math.cos(angle), (i - (n - 1) / 2) * step * math.sin(angle))
               for i in range(n)]
    half_w = max(abs(ox) for ox, _ in offsets) + radius * 0.6
    half_h = max(abs(oy) for _, oy in offsets) + radius * 0.6
    cx = rng.uniform(min(half_w, w / 2), max(w - half_w, w / 2))
    cy = rng.uniform(min(half_h, h / 2), max(h - half_h, h / 2))
    return [(cx + ox, cy + oy) for ox, oy in offsets]


def render(rng: np.random.Generator, family: ClassFamily, w: int, h: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One uint8 H×W×3 RGB image of a class and the pixel box (x0, y0, x1, y1) of its object(s).

    Every draw before the object's copies is independent of `family` (the tests redraw a val image
    as another class and find the same scene with another object).
    """
    img = background(rng, w, h)  # channel-first while drawing
    side = min(w, h)
    others = [s for s in SHAPES if s != family.shape]
    for _ in range(int(rng.integers(1, 4))):  # distractors, of other shapes, drawn underneath
        shape = others[int(rng.integers(len(others)))]
        texture = DISTRACTOR_TEXTURES[int(rng.integers(len(DISTRACTOR_TEXTURES)))]
        col, second = colour_pair(rng)
        r_eq = side * rng.uniform(*DISTRACTOR_RADIUS)
        draw_shape(img, rng, shape, texture, (rng.uniform(0, w), rng.uniform(0, h)),
                   r_eq * math.sqrt(math.pi / unit_area(shape)), col, second)
    copies = LAYOUT_COPIES[family.layout]
    r_eq = side * rng.uniform(*OBJECT_RADIUS) / math.sqrt(copies)  # the copies share one area
    radius = r_eq * math.sqrt(math.pi / unit_area(family.shape))
    centres = layout_centres(rng, family.layout, w, h, radius)
    x0, y0 = (max(int(min(cx for cx, _ in centres) - radius), 0), max(int(min(cy for _, cy in centres) - radius), 0))
    x1, y1 = (min(int(max(cx for cx, _ in centres) + radius) + 1, w), min(int(max(cy for _, cy in centres) + radius) + 1, h))
    ground = float(np.tensordot(LUMA, img[:, y0:y1, x0:x1].mean(axis=(1, 2)), 1))
    colour, second = colour_pair(rng, ground)
    boxes = [b for b in (draw_shape(img, rng, family.shape, family.texture, c, radius, colour, second)
                         for c in centres) if b is not None]
    box = (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)) \
        if boxes else (0, 0, w - 1, h - 1)  # the centres are kept inside, but never write a box-less image
    # Lighting: contrast about the mean, then brightness; then a fifth lose their colour.
    mean = float(img.mean())
    img = (img - mean) * np.float32(rng.uniform(0.75, 1.25)) + mean * np.float32(rng.uniform(0.75, 1.2))
    if rng.random() < GREYSCALE_P:
        img[:] = np.tensordot(LUMA, img, 1)[None]
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0)), box


def encode(img: np.ndarray, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """Encode an RGB array as JPEG/PNG/GIF after converting to `mode` (deterministic bytes)."""
    pil = Image.fromarray(img)
    if mode == "P":
        pil = pil.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    elif mode != "RGB":
        pil = pil.convert(mode)
    buf = io.BytesIO()
    if fmt == "JPEG":
        pil.save(buf, "JPEG", quality=JPEG_QUALITY)
    else:
        pil.save(buf, fmt)
    return buf.getvalue()


def quirk_bytes(kind: str, img: np.ndarray) -> tuple[bytes, dict[str, Any]]:
    """The file content of one quirk drawn from `img`, and what a reader should find in it."""
    if kind == "cmyk":
        return encode(img, "JPEG", "CMYK"), {"format": "JPEG", "mode": "CMYK"}
    if kind == "greyscale":
        return encode(img, "JPEG", "L"), {"format": "JPEG", "mode": "L"}
    if kind == "png":
        return encode(img, "PNG"), {"format": "PNG", "mode": "RGB"}
    if kind == "rgba_png":
        rgba = np.dstack([img, np.full(img.shape[:2], 0, np.uint8)])
        h, w = img.shape[:2]
        rgba[h // 8: h - h // 8, w // 8: w - w // 8, 3] = 255  # opaque middle, transparent frame
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, "PNG")
        return buf.getvalue(), {"format": "PNG", "mode": "RGBA"}
    if kind == "palette":
        return encode(img, "GIF", "P"), {"format": "GIF", "mode": "P"}
    if kind in ("tiny", "huge"):
        return encode(img), {"format": "JPEG", "mode": "RGB"}
    if kind == "truncated":
        data = encode(img)
        return data[: len(data) // 2], {"format": None, "mode": None}
    if kind == "empty":
        return b"", {"format": None, "mode": None}
    if kind == "text":
        return TEXT_BODY, {"format": None, "mode": None}
    raise ValueError(f"unknown quirk {kind!r}")
