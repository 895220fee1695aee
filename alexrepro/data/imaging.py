"""One source image to one stored image: decode → RGB → shorter side 256 → central 256×256 → encode.

§2: "we down-sampled the images to a fixed resolution of 256×256: given a rectangular image, we first
rescaled the image such that the shorter side was of length 256, and then cropped out the central
256×256 patch". The paper names no resampling filter; we use an antialiased bilinear filter (as
torchvision's Resize on PIL images), resample only the part of the image the central crop keeps, and let
libjpeg decode large JPEGs at 1/2, 1/4 or 1/8 scale (draft mode, never below 256 on the shorter side).

The "warp" resize is Caffe's ImageNet preparation instead (`convert_imageset --resize_height 256
--resize_width 256`): the whole image to 256×256, the aspect ratio not kept. Caffe resamples with
OpenCV's bilinear filter, without antialiasing; we use the same antialiased filter as for §2's resize.

EXIF orientation is ignored: the pixels are used in the order the file stores them, as ImageNet's own
tools, Krizhevsky's pipeline and torchvision's loader (PIL without `ImageOps.exif_transpose`) all do, so a
set prepared here matches the images those models were trained and scored on (docs/FORMAT.md, "Images").
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from alexrepro.data.options import JPEG_QUALITY
from alexrepro.data.shards import IMAGE_SIZE

RESAMPLE = Image.Resampling.BILINEAR  # antialiased when reducing (PIL's filters scale their support)
REDUCING_GAP = 3.0  # PIL: reduce by an integer factor first when the scale is ≥ 3×; "indistinguishable"
RESIZE_MODES = ("shorter-side", "warp")  # §2's rescale and central crop | Caffe's warp to size×size


# The oddities of real sources that prep converts and reports by kind (`quirks_of`), with what it did.
QUIRKS = {
    "cmyk": "CMYK, converted to RGB",
    "greyscale": "greyscale, converted to RGB",
    "palette": "palette colours, converted to RGB",
    "alpha": "transparency dropped, as torchvision's loader does",
    "not-jpeg": "named .JPEG but another format (PNG, GIF, ...), decoded as what it is",
    "tiny": "shorter side under 64, enlarged 4× or more",
    "huge": "over 4 megapixels, decoded at reduced scale where JPEG",
}
JPEG_NAMES = (".jpeg", ".jpg")
TINY_SIDE = IMAGE_SIZE // 4
HUGE_PIXELS = 4_000_000


class BadImage(Exception):
    """A source file that cannot become a stored image; the message is the reason (one line)."""


def image_suffixes() -> set[str]:
    """The file suffixes Pillow reads (".jpeg", ".webp", ".tif", ...), lower case."""
    Image.init()
    return {suffix.lower() for suffix in Image.registered_extensions()}


def opens_as_image(data: bytes) -> bool:
    """Whether Pillow recognises `data` as an image (its header only: nothing is decoded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DecompressionBombWarning: a large image is still an image
        try:
            with Image.open(io.BytesIO(data)):
                return True
        except Image.DecompressionBombError:
            return True
        except (OSError, SyntaxError, ValueError, EOFError):  # UnidentifiedImageError is an OSError
            return False


def center_crop_box(width: int, height: int, size: int = IMAGE_SIZE) -> tuple[float, float, float, float]:
    """The source region that becomes the central size×size patch after §2's rescale (unrounded).

    Rescaling by s = size / min(w, h) and cropping size×size keeps a square of side size / s = min(w, h).
    """
    side = min(width, height)
    left = (width - side) / 2
    top = (height - side) / 2
    return (left, top, left + side, top + side)


def open_image(data: bytes, size: int = IMAGE_SIZE) -> Image.Image:
    """Decode image bytes (any mode); large JPEGs are DCT-scaled but keep the shorter side ≥ size."""
    return _open_sized(data, size)[0]


def _open_sized(data: bytes, size: int) -> tuple[Image.Image, tuple[int, int]]:
    """open_image, and the size the file declares (draft decoding may have loaded it smaller)."""
    if not data:
        raise BadImage("empty file")
    try:
        im = Image.open(io.BytesIO(data))
        original = im.size
        # draft() picks the largest 1/2, 1/4, 1/8 scale with both sides still ≥ the request,
        # so the shorter side stays ≥ size; it only changes anything when that side is ≥ 2·size.
        if im.format == "JPEG" and min(im.size) >= 2 * size:
            im.draft("RGB", (size, size))
        im.load()
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely ({e})") from None
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (no decoder recognises the bytes)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"truncated or corrupt image ({_one_line(e)})") from None
    if min(im.size) < 1:
        raise BadImage(f"image has no pixels ({im.size[0]}×{im.size[1]})")
    if min(im.size) < min(size, *original):  # draft must never take the shorter side below `size`
        raise AssertionError(f"draft decoded {original} at {im.size}, below {size}")
    return im, original


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as RGB: CMYK, greyscale, palette, alpha (dropped, as torchvision's loader), 16-bit."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I;16"):
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")  # 16-bit to 8-bit
    elif im.mode == "F":
        im = im.convert("L")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise BadImage(f"cannot convert mode {im.mode} to RGB ({_one_line(e)})") from None


def resize_center_crop(im: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """§2: shorter side to `size` (antialiased), central size×size patch; only the kept box is resampled."""
    box = center_crop_box(*im.size, size=size)
    if im.size == (size, size):
        return im
    return im.resize((size, size), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)


def warp_resize(im: Image.Image, size: int = IMAGE_SIZE) -> Image.Image:
    """Caffe's preparation: the whole image to size×size (antialiased), its aspect ratio not kept."""
    if im.size == (size, size):
        return im
    return im.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)


def quirks_of(name: str, image_format: str | None, mode: str, size: tuple[int, int]) -> tuple[str, ...]:
    """The QUIRKS kinds of a source image called `name` (its file name), as found before conversion."""
    kinds = []
    if mode == "CMYK":
        kinds.append("cmyk")
    if mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16"):
        kinds.append("greyscale")
    if mode in ("P", "PA"):
        kinds.append("palette")
    if "A" in mode or mode == "RGBa":
        kinds.append("alpha")
    if image_format != "JPEG" and name.lower().endswith(JPEG_NAMES):
        kinds.append("not-jpeg")
    if min(size) < TINY_SIDE:
        kinds.append("tiny")
    elif size[0] * size[1] > HUGE_PIXELS:
        kinds.append("huge")
    return tuple(kinds)


def prepare_image(
    data: bytes,
    encoding: str = "jpeg",
    quality: int = JPEG_QUALITY,
    size: int = IMAGE_SIZE,
    resize: str = "shorter-side",
) -> bytes | np.ndarray:
    """Source bytes to the stored image: JPEG bytes (encoding "jpeg") or a size×size×3 uint8 array ("raw").

    resize "shorter-side" is §2's rescale and central crop; "warp" is Caffe's whole-image warp.
    """
    return prepare_and_describe(data, encoding, quality, size, resize=resize)[0]


def prepare_and_describe(
    data: bytes, encoding: str = "jpeg", quality: int = JPEG_QUALITY, size: int = IMAGE_SIZE, name: str = "",
    resize: str = "shorter-side",
) -> tuple[bytes | np.ndarray, tuple[str, ...]]:
    """prepare_image, and the QUIRKS kinds of the source (`name` is its file name, for "not-jpeg")."""
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize {resize!r}; use one of {', '.join(RESIZE_MODES)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's EXIF/palette warnings would break the progress display
        im, original = _open_sized(data, size)
        kinds = quirks_of(name, im.format, im.mode, original)
        im = resample_rgb(im, size, resize)
    if encoding == "raw":
        return np.asarray(im, dtype=np.uint8), kinds
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue(), kinds


def resample_rgb(im: Image.Image, size: int = IMAGE_SIZE, resize: str = "shorter-side") -> Image.Image:
    """A decoded image of any mode → RGB size×size: §2's rescale and central crop, or Caffe's warp."""
    resample = resize_center_crop if resize == "shorter-side" else warp_resize
    try:
        if im.mode in ("RGB", "L"):  # resample first: fewer channels (L), and RGB is a no-op
            return to_rgb(resample(im, size))
        return resample(to_rgb(im), size)  # palette must not be resampled as indices; CMYK/alpha convert first
    except (OSError, ValueError) as e:
        raise BadImage(f"truncated or corrupt image ({_one_line(e)})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
