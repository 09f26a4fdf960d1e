"""pipeline.core.images.imaging: the pixel cap holds before decoding, broken files are named, every mode becomes RGB."""
from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.core.images.imaging import (
    BadRotation,
    ImageProblem,
    TooLarge,
    hamming,
    image_phash,
    load_image,
    rotation_degrees,
    to_rgb,
    upright,
)

PATCHES = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (20, 60, 235), "white": (255, 255, 255)}


def encode(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` but whose pixel data is a few bytes: only a reader
    that decodes before checking the size would notice (and then fail) instead of refusing it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def patches() -> Image.Image:
    """Four flat colour patches side by side, 40x40 each."""
    image = Image.new("RGB", (160, 40))
    for i, rgb in enumerate(PATCHES.values()):
        image.paste(rgb, (40 * i, 0, 40 * i + 40, 40))
    return image


def patch_colours(image: Image.Image) -> list[tuple[int, ...]]:
    pixels = np.asarray(image)
    return [tuple(int(v) for v in pixels[20, 40 * i + 20]) for i in range(len(PATCHES))]


@pytest.mark.parametrize("width,height", [(12_000, 9_000), (15_000, 15_000)])  # 108 MP: Pillow warns; 225: it raises
def test_pixel_cap_refuses_before_decoding(width: int, height: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # our cap is the rule: no DecompressionBombWarning leaks out
        with pytest.raises(TooLarge) as refused:
            load_image(png_header_only(width, height), max_pixels=100_000_000)
    assert refused.value.status == "too_large"
    assert "100 MP" in str(refused.value) or "decompression bomb" in str(refused.value).lower()


def test_pixel_cap_is_ours_not_pillows() -> None:
    image = Image.new("RGB", (200, 100), "white")
    with pytest.raises(TooLarge, match="200x100"):
        load_image(encode(image), max_pixels=19_999)
    assert load_image(encode(image), max_pixels=20_000).size == (200, 100)


def test_truncated_jpeg_fails_the_full_decode() -> None:
    jpeg = encode(patches().resize((640, 480)), "JPEG", quality=90)
    header_ok = Image.open(io.BytesIO(jpeg[: len(jpeg) // 2]))
    assert header_ok.size == (640, 480)  # the header alone would pass a lazy check
    with pytest.raises(ImageProblem, match="decode failed") as broken:
        load_image(jpeg[: len(jpeg) // 2], max_pixels=10**8)
    assert broken.value.status == "corrupt"


@pytest.mark.parametrize("data", [b"<!DOCTYPE html><html></html>", b"", encode(Image.new("RGB", (8, 8)), "BMP")])
def test_non_images_and_unlisted_formats_are_refused(data: bytes) -> None:
    with pytest.raises(ImageProblem, match="not an image") as refused:
        load_image(data, max_pixels=10**8)
    assert refused.value.status == "corrupt"


def test_cmyk_jpeg_keeps_its_colours() -> None:
    cmyk = load_image(encode(patches().convert("CMYK"), "JPEG", quality=95), max_pixels=10**8)
    assert cmyk.mode == "CMYK"
    for got, want in zip(patch_colours(to_rgb(cmyk)), PATCHES.values()):
        assert max(abs(g - w) for g, w in zip(got, want)) <= 8, (got, want)


def test_alpha_is_composited_on_white() -> None:
    image = patches().convert("RGBA")
    alpha = Image.new("L", image.size, 255)
    alpha.paste(0, (0, 0, 40, 40))        # the red patch fully transparent
    alpha.paste(128, (40, 0, 80, 40))     # the green one half
    image.putalpha(alpha)
    rgb = to_rgb(load_image(encode(image), max_pixels=10**8))
    red, green, blue, _ = patch_colours(rgb)
    assert rgb.mode == "RGB" and red == (255, 255, 255) and blue == PATCHES["blue"]
    assert all(abs(g - round((c + 255) / 2)) <= 1 for g, c in zip(green, PATCHES["green"]))


def test_palette_with_transparency_and_greyscale_alpha() -> None:
    palette = patches().quantize(4)
    palette.info["transparency"] = palette.getpixel((20, 20))  # the red patch's palette index
    rgb = to_rgb(load_image(encode(palette), max_pixels=10**8))
    assert patch_colours(rgb)[0] == (255, 255, 255) and patch_colours(rgb)[2] == PATCHES["blue"]
    la = Image.new("LA", (10, 10), (40, 0))
    assert to_rgb(la).getpixel((5, 5)) == (255, 255, 255)


def test_greyscale_8_and_16_bit_become_three_equal_channels() -> None:
    grey = to_rgb(load_image(encode(Image.linear_gradient("L")), max_pixels=10**8))
    pixels = np.asarray(grey)
    assert grey.mode == "RGB" and (pixels[..., 0] == pixels[..., 2]).all() and pixels.std() > 50
    deep = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.uint16))
    loaded = load_image(encode(deep), max_pixels=10**8)
    assert loaded.mode.startswith("I")
    assert [to_rgb(loaded).getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


@pytest.mark.parametrize("value,degrees", [(None, 0), (float("nan"), 0), (np.float32("nan"), 0), (0.0, 0),
                                           (90.0, 90), (np.float32(180), 180), (270, 270)])
def test_rotation_values(value: object, degrees: int) -> None:
    assert rotation_degrees(value) == degrees


@pytest.mark.parametrize("value", [45.0, -90.0, 360.0, "up"])
def test_bad_rotation_values(value: object) -> None:
    with pytest.raises(BadRotation):
        rotation_degrees(value)


def test_upright_turns_counter_clockwise() -> None:
    image = Image.new("RGB", (2, 1))
    image.putpixel((0, 0), (255, 0, 0))  # red on the left
    turned = upright(image, 90)
    assert turned.size == (1, 2) and turned.getpixel((0, 1)) == (255, 0, 0)  # CCW: left goes to the bottom
    assert upright(image, 270).getpixel((0, 0)) == (255, 0, 0)  # CW: left goes to the top
    assert upright(image, 180).getpixel((1, 0)) == (255, 0, 0)
    assert upright(image, 0) is image


def test_phash_is_stable_under_reencoding_and_tells_pictures_apart() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
    other = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).resize((640, 480), Image.BICUBIC)
    reencoded = load_image(encode(photo.resize((480, 360)), "JPEG", quality=60), max_pixels=10**8)
    ours = image_phash(photo)
    assert len(ours) == 64
    assert hamming(ours, image_phash(reencoded)) <= 12
    assert hamming(ours, image_phash(other)) >= 64
