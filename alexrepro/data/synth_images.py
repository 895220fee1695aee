"""Drawing and encoding the images of `alexrepro synth`: one look per class, cluttered scenes.

Each class is a combination of a shape, a texture and a hue (`class_look`). An image of
that class draws its object at a random position, scale, rotation and squash over a random
colour gradient with noise and smaller distractor shapes of other kinds, then jitters
brightness and contrast. Colour alone separates classes only partly (distractors and
backgrounds take any hue), so a small CNN learns the set well above chance but not at once.
All drawing is vectorised numpy on float32 arrays; an image of about 450×340 takes a few ms.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

SHAPES = ("disc", "square", "triangle", "star", "ring", "cross", "hexagon", "crescent")
TEXTURES = ("plain", "stripes", "checker", "dots", "noise")
TEXTURE_WORDS = {"plain": "plain", "stripes": "striped", "checker": "checkered", "dots": "dotted",
                 "noise": "speckled"}
HUE_WORDS = ("red", "orange", "yellow", "lime", "green", "spring green", "cyan", "azure", "blue",
             "violet", "magenta", "rose")
# Successive class hues step by 1 - 1/φ of the colour wheel, so the first few are far apart
# and no two classes ever share a hue.
HUE_STEP = (3 - math.sqrt(5)) / 2

# Image sides, in px, before --min-size/--max-size remap them. Most ImageNet photos are about
# 500×375 or 500×333; a tail runs from ~100 px thumbnails to multi-megapixel scans.
DEFAULT_MIN_SIZE = 100
DEFAULT_MAX_SIZE = 2000
TYPICAL_LONG_SIDE = (400, 500)
ASPECTS = (4 / 3, 3 / 2, 1.0, 5 / 4, 16 / 9)
ASPECT_P = (0.45, 0.3, 0.1, 0.08, 0.07)
JPEG_QUALITY = 90  # about what ImageNet's Flickr JPEGs carry
TEXT_BODY = b"<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"


@dataclass(frozen=True)
class ClassLook:
    """What every image of one class shows: a shape, a texture and a hue in [0, 1)."""

    shape: str
    texture: str
    hue: float

    def description(self) -> str:
        """Words for the look, e.g. 'striped orange square'."""
        colour = HUE_WORDS[int(round(self.hue * len(HUE_WORDS))) % len(HUE_WORDS)]
        return f"{TEXTURE_WORDS[self.texture]} {colour} {self.shape}"


def class_look(index: int) -> ClassLook:
    """The look of class `index` (sorted-WNID order); the same for every seed.

    8 shapes and 5 textures are coprime, so the first 40 classes all have a different
    (shape, texture) pair, and the hue sequence never repeats.
    """
    return ClassLook(SHAPES[index % len(SHAPES)], TEXTURES[index % len(TEXTURES)], (index * HUE_STEP) % 1.0)


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


def texture_mix(texture: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """How much of the second colour each pixel takes (0..1), or None for a plain fill."""
    if texture == "plain":
        return None
    if texture == "stripes":
        return (np.sin(u * 3.5 * math.pi) > 0).astype(np.float32)
    if texture == "checker":
        return (np.mod(np.floor(u * 3) + np.floor(v * 3), 2)).astype(np.float32)
    if texture == "dots":
        fu, fv = np.mod(u * 3, 1.0) - 0.5, np.mod(v * 3, 1.0) - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    if texture == "noise":
        return (rng.random(u.shape, dtype=np.float32) < 0.4).astype(np.float32)
    raise ValueError(f"unknown texture {texture!r}")


def draw_shape(img: np.ndarray, rng: np.random.Generator, look: ClassLook, centre: tuple[float, float],
               radius: float, colour: np.ndarray, second: np.ndarray) -> tuple[int, int, int, int] | None:
    """Paint one rotated, squashed, textured shape into the 3×H×W `img` in place; its pixel box or None."""
    h, w = img.shape[1:]
    cx, cy = centre
    x0, x1 = max(int(cx - radius * 1.3), 0), min(int(cx + radius * 1.3) + 1, w)
    y0, y1 = max(int(cy - radius * 1.3), 0), min(int(cy + radius * 1.3) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    phi = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.8, 1.2)
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    c, s = math.cos(phi), math.sin(phi)
    u = (c * dx + s * dy) / (radius * squash)
    v = (c * dy - s * dx) * (squash / radius)
    dist = shape_distance(look.shape, u, v)
    alpha = np.clip(0.5 - dist * radius, 0.0, 1.0)  # about one pixel of anti-aliased edge
    mix = texture_mix(look.texture, u, v, rng)
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


def render(rng: np.random.Generator, look: ClassLook, w: int, h: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One uint8 H×W×3 RGB image of a class and the pixel box (x0, y0, x1, y1) of its object."""
    img = background(rng, w, h)  # channel-first while drawing
    side = min(w, h)
    others = [s for s in SHAPES if s != look.shape]
    for _ in range(int(rng.integers(1, 4))):  # distractors, of other shapes, drawn underneath
        d_look = ClassLook(others[int(rng.integers(len(others)))], TEXTURES[int(rng.integers(len(TEXTURES)))],
                           float(rng.random()))
        col = hsv_rgb(d_look.hue, rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0))
        draw_shape(img, rng, d_look, (rng.uniform(0, w), rng.uniform(0, h)), side * rng.uniform(0.07, 0.2),
                   col, col * np.float32(0.45))
    radius = side * rng.uniform(0.2, 0.4)
    centre = (rng.uniform(radius * 0.6, w - radius * 0.6), rng.uniform(radius * 0.6, h - radius * 0.6))
    colour = hsv_rgb(look.hue + rng.uniform(-0.03, 0.03), rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
    box = draw_shape(img, rng, look, centre, radius, colour, colour * np.float32(rng.uniform(0.3, 0.55)))
    if box is None:  # cannot happen with the centre kept inside, but never write a box-less image
        box = (0, 0, w - 1, h - 1)
    # Lighting: contrast about the mean, then brightness.
    mean = float(img.mean())
    img = (img - mean) * np.float32(rng.uniform(0.75, 1.25)) + mean * np.float32(rng.uniform(0.75, 1.2))
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
