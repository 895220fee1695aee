"""Imaging: §2's shorter-side-256 rescale and central crop, every PIL mode to RGB, bad files named."""

import io

import numpy as np
import pytest
from PIL import Image

from alexrepro.data.imaging import BadImage, center_crop_box, open_image, prepare_image

SIZE = 256  # §2


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def smooth_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """Gradients plus low-frequency noise: resampling-friendly, so filters differ only slightly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    coarse = np.asarray(Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC))
    arr = 0.5 * coarse + 60 * np.stack([xx, yy, 1 - xx], axis=-1) + 40
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def reference(im: Image.Image) -> np.ndarray:
    """§2 written out directly: shorter side to 256 (rounded), then the central 256×256 patch."""
    w, h = im.size
    nw, nh = (SIZE, round(h * SIZE / w)) if w <= h else (round(w * SIZE / h), SIZE)
    r = im.convert("RGB").resize((nw, nh), Image.BILINEAR)
    left, top = (nw - SIZE) // 2, (nh - SIZE) // 2
    return np.asarray(r.crop((left, top, left + SIZE, top + SIZE)), dtype=np.float64)


def test_geometry_pure_functions():
    # 1024 wide × 512 tall: rescale by 1/2 → 512×256, crop the central 256 → source x 256..768
    assert center_crop_box(1024, 512) == (256.0, 0.0, 768.0, 512.0)
    assert center_crop_box(333, 500) == (0.0, 83.5, 333.0, 416.5)  # (500 − 333) / 2 = 83.5


@pytest.mark.parametrize("w, h", [(300, 400), (640, 480), (1300, 900), (257, 700), (120, 90)])
def test_matches_direct_resize_and_crop(w, h):
    src = smooth_image(w, h, seed=w)
    data = encode(src, quality=98)
    got = prepare_image(data, encoding="raw")
    assert got.shape == (SIZE, SIZE, 3) and got.dtype == np.uint8
    ref = reference(Image.open(io.BytesIO(data)))
    diff = np.abs(got.astype(np.float64) - ref)
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 12  # JPEG decode/DCT-scale tolerance
    stored = np.asarray(Image.open(io.BytesIO(prepare_image(data, quality=95))))
    assert stored.shape == (SIZE, SIZE, 3) and np.abs(stored - ref).mean() < 3.0


def test_centre_is_kept():
    """A wide image: outer quarters green, the centre half red | blue; the crop holds only red | blue."""
    arr = np.zeros((512, 1024, 3), dtype=np.uint8)
    arr[:, :256] = arr[:, 768:] = (0, 255, 0)
    arr[:, 256:512] = (255, 0, 0)
    arr[:, 512:768] = (0, 0, 255)
    out = prepare_image(encode(Image.fromarray(arr), "PNG"), encoding="raw").astype(int)
    # (the outermost column blends with its neighbour outside the crop, as resize-then-crop does)
    assert np.all(out[:, 2:124, 0] > 240) and np.all(out[:, 2:124, 1] < 15)  # left half red
    assert np.all(out[:, 132:254, 2] > 240) and np.all(out[:, 132:254, 1] < 15)  # right half blue
    tall = np.zeros((1024, 512, 3), dtype=np.uint8)
    tall[:512] = (255, 255, 255)
    out = prepare_image(encode(Image.fromarray(tall), "PNG"), encoding="raw").astype(int)
    assert np.all(out[:124] > 240) and np.all(out[132:] < 15)  # top half white, bottom black


@pytest.mark.parametrize("w, h", [(512, 512), (1100, 513), (2000, 1030), (4100, 2100), (511, 2000)])
def test_draft_never_below_256(w, h):
    im = open_image(encode(smooth_image(w, h)))
    assert min(im.size) >= SIZE
    if min(w, h) >= 2 * SIZE:
        assert im.size[0] < w  # DCT scaling did happen
    assert prepare_image(encode(smooth_image(w, h)), encoding="raw").shape == (SIZE, SIZE, 3)


def quirk(kind: str) -> bytes:
    base = smooth_image(300, 260)
    if kind == "cmyk":
        return encode(base.convert("CMYK"))
    if kind == "grey":
        return encode(base.convert("L"))
    if kind == "palette":
        return encode(base.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG")
    if kind == "rgba":
        return encode(base.convert("RGBA"), "PNG")
    if kind == "png_named_jpeg":
        return encode(base, "PNG")
    if kind == "sixteen_bit":
        return encode(Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 256), "PNG")
    if kind == "tiny":
        return encode(smooth_image(40, 30))
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["cmyk", "grey", "palette", "rgba", "png_named_jpeg", "sixteen_bit", "tiny"])
def test_every_mode_becomes_rgb(kind):
    data = quirk(kind)
    out = prepare_image(data, encoding="raw")
    assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
    # the same picture: 16-bit compared with its 8-bit original (PIL's own conversion clips it)
    ref = reference(smooth_image(300, 260).convert("L") if kind == "sixteen_bit" else Image.open(io.BytesIO(data)))
    assert np.abs(out - ref).mean() < 3.0
    assert Image.open(io.BytesIO(prepare_image(data))).mode == "RGB"


def test_greyscale_stays_grey():
    out = prepare_image(quirk("grey"), encoding="raw").astype(int)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"this is not an image\n", "not an image"),
        (encode(smooth_image(300, 300))[:600], "truncated"),
    ],
)
def test_bad_files_give_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        prepare_image(data)


def test_quality_option():
    data = encode(smooth_image(400, 300), quality=98)
    assert len(prepare_image(data, quality=95)) > len(prepare_image(data, quality=50))


# ------------------------------------------------------------------------------------------ Caffe's warp
def test_warp_keeps_the_whole_image_and_squashes_it():
    """Caffe's convert_imageset --resize_height 256 --resize_width 256: all four quarters survive, each
    squashed to a quarter of the width (aspect ratio not kept), where §2's crop drops the outer two."""
    arr = np.zeros((512, 1024, 3), dtype=np.uint8)
    arr[:, :256] = (0, 255, 0)
    arr[:, 256:512] = (255, 0, 0)
    arr[:, 512:768] = (0, 0, 255)
    arr[:, 768:] = (255, 255, 255)
    out = prepare_image(encode(Image.fromarray(arr), "PNG"), encoding="raw", resize="warp").astype(int)
    assert out.shape == (SIZE, SIZE, 3)
    # 1024 → 256 columns: source quarter q lands on columns 64q..64q+63 (blending 1-2 columns at each border)
    assert np.all(out[:, 2:62, 1] > 240) and np.all(out[:, 2:62, 0] < 15)  # green
    assert np.all(out[:, 66:126, 0] > 240) and np.all(out[:, 66:126, 1] < 15)  # red
    assert np.all(out[:, 130:190, 2] > 240) and np.all(out[:, 130:190, 0] < 15)  # blue
    assert np.all(out[:, 194:254] > 240)  # white
    cropped = prepare_image(encode(Image.fromarray(arr), "PNG"), encoding="raw").astype(int)
    assert np.all(cropped[:, 2:124, 0] > 240)  # the shorter-side crop starts inside the red quarter


@pytest.mark.parametrize("w, h", [(300, 400), (640, 480), (120, 90), (2000, 1030)])
def test_warp_is_a_direct_resize_to_256_square(w, h):
    src = smooth_image(w, h, seed=w)
    data = encode(src, quality=98)
    got = prepare_image(data, encoding="raw", resize="warp").astype(np.float64)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), np.float64)
    # equal but for libjpeg's DCT-scaled decode of large files (draft mode), as in §2's path above
    assert np.abs(got - ref).mean() < (2.0 if min(w, h) >= 2 * SIZE else 1e-9)
    stored = np.asarray(Image.open(io.BytesIO(prepare_image(data, resize="warp"))))
    assert stored.shape == (SIZE, SIZE, 3)


def test_unknown_resize_mode():
    with pytest.raises(ValueError, match="shorter-side, warp"):
        prepare_image(encode(smooth_image(300, 300)), resize="stretch")


def test_exif_orientation_is_ignored_like_imagenets_tools_and_torchvision():
    """A photo tagged "rotate 90° to display" (EXIF orientation 6) is stored as its pixels lie in the file,
    as torchvision's loader (PIL without exif_transpose) and ImageNet's own tools read it."""
    im = smooth_image(400, 300, seed=3)  # landscape as stored; displayed, it would be portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    tagged = encode(im, quality=95, exif=exif.tobytes())
    assert Image.open(io.BytesIO(tagged)).getexif()[0x0112] == 6
    plain = encode(im, quality=95)
    got = prepare_image(tagged, encoding="raw")
    assert np.array_equal(got, prepare_image(plain, encoding="raw"))  # the tag changes nothing
    torchvision_view = Image.open(io.BytesIO(tagged)).convert("RGB")  # torchvision.datasets.folder.pil_loader
    assert torchvision_view.size == (400, 300)
    assert np.abs(got - reference(torchvision_view)).mean() < 2.0
    rotated = reference(Image.open(io.BytesIO(tagged)).transpose(Image.Transpose.ROTATE_270))
    assert np.abs(got - rotated).mean() > 10  # honouring the tag would have stored another picture
