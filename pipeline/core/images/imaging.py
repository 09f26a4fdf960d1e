"""Image helpers shared by the crop and clean stages: open safely, decode fully, make RGB, turn upright.

Every picture comes from the internet, so it is opened the defensive way:

- **Our own pixel cap, checked before decoding.** Pillow reads the size from the header without decoding;
  we refuse anything over ``max_pixels`` there. Pillow's own guard (``Image.MAX_IMAGE_PIXELS``) only *warns*
  between 89 and 179 megapixels and raises above that; we silence the warning (our cap is the rule) and
  report Pillow's error as the same refusal.
- **Only the formats the download stage keeps** (JPEG, PNG, GIF, WebP), so a
  file claiming to be an image cannot reach one of Pillow's rarer parsers.
- **A full decode, never ``Image.draft``.** Draft mode lets libjpeg decode at 1/2..1/8 scale, which is fast but
  skips most of the data, so a file truncated or broken near its end would pass. ``load()`` decodes every
  pixel; a truncated file raises (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays False).

Colour: CMYK, palette, greyscale (8 and 16 bit) and images with alpha all become 8-bit RGB; transparency is
composited on white, as a browser shows a transparent PNG. A greyscale photo stays a real photo (three equal
channels), nothing here treats one channel as a defect.

Orientation: :func:`upright` turns an image counter-clockwise by Open Images' ``Rotation`` column. EXIF
orientation is deliberately *not* applied anywhere (``ImageOps.exif_transpose`` is never called): Open Images
recovered ``Rotation`` from the EXIF tag and its boxes refer to the stored pixel matrix, so applying both
would turn a picture twice (see the crop stage).
"""
from __future__ import annotations

import io
import math
import warnings

import imagehash
import numpy as np
import scipy.fftpack  # noqa: F401  imagehash.phash imports it lazily (~0.3 s); here, forked workers inherit it
from PIL import Image, UnidentifiedImageError

from pipeline.core.base.status import Crop

#: Pillow format names we are willing to parse (the download stage keeps jpg, png, gif, webp)
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # JPEG covers multi-picture (MPO) camera files too
#: what transparent pixels become
BACKGROUND = (255, 255, 255)
#: perceptual hashes are PHASH_SIZE x PHASH_SIZE bits, from a thumbnail 4 times that side (as imagehash does)
PHASH_SIZE = 16

_SIXTEEN_BIT = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_TRANSPOSE = {
    90: Image.Transpose.ROTATE_90,    # Pillow's ROTATE_* turn counter-clockwise, like Open Images' Rotation
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}
Image.init()  # registers every plugin: Image.open(formats=...) finds WebP only after this


class ImageProblem(Exception):
    """A picture we cannot use. ``status`` is the manifest status; the message is the human reason."""

    status = Crop.CORRUPT


class TooLarge(ImageProblem):
    """More pixels than the cap: refused before decoding (a decompression bomb or just too big)."""

    status = Crop.TOO_LARGE


class BadRotation(ImageProblem):
    """A Rotation value that is not 0, 90, 180, 270 or empty."""

    status = Crop.BAD_ROTATION


def load_image(data: bytes, max_pixels: int) -> Image.Image:
    """Parse ``data``, refuse it when over ``max_pixels``, then decode every pixel (first frame only).

    Raises :class:`TooLarge` or :class:`ImageProblem` (status ``corrupt``) with a one-line reason.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooLarge(f"refused before decoding: {exc}") from None
    except UnidentifiedImageError:
        raise ImageProblem("not an image in a supported format (JPEG, PNG, GIF, WebP)") from None
    except Exception as exc:  # a hostile file can make a parser raise almost anything; it is still one bad file
        raise ImageProblem(f"unreadable header: {type(exc).__name__}: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooLarge(f"{width}x{height} is {width * height / 1e6:.1f} MP, over the cap of {max_pixels / 1e6:g} MP")
    if width == 0 or height == 0:
        raise ImageProblem(f"empty image ({width}x{height})")
    try:
        image.load()
    except Exception as exc:  # as above: OSError for truncation, but also SyntaxError, ValueError, ...
        raise ImageProblem(f"decode failed: {type(exc).__name__}: {exc}") from None
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any mode Pillow gives us; transparency composited on white."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in _SIXTEEN_BIT:
        # Pillow's own I -> L conversion clips at 255 instead of scaling, which would make 16-bit grey white
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def rotation_degrees(value: object) -> int:
    """Open Images' Rotation as 0, 90, 180 or 270; empty (NaN/None) means unknown and is taken as 0."""
    if value is None:
        return 0
    try:
        degrees = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadRotation(f"Rotation {value!r} is not a number") from None
    if math.isnan(degrees):
        return 0
    if degrees not in (0.0, 90.0, 180.0, 270.0):
        raise BadRotation(f"Rotation {value!r} is not one of 0, 90, 180, 270")
    return int(degrees)


def upright(image: Image.Image, degrees_ccw: int) -> Image.Image:
    """Turn ``image`` counter-clockwise by ``degrees_ccw`` (a lossless transpose)."""
    return image.transpose(_TRANSPOSE[degrees_ccw]) if degrees_ccw else image


def image_phash(image: Image.Image) -> str:
    """256-bit perceptual hash (imagehash's DCT ``phash``, ``hash_size=16``) of an RGB or L image, as 64 hex digits.

    256 rather than imagehash's default 64 bits: photos of one kind of scene (a burger on a table) share their
    8x8 lowest frequencies: on the mirror's photos 64-bit hashes of different photos came within 6 bits, as
    close as a resized copy; at 16x16 they stay 46+ bits apart while copies stay within 6-10.

    The picture is box-averaged to 64x64 (the size ``phash`` works at; its own Lanczos resize of a 1024x768
    photo would take ~10 ms) in two steps: an integer :meth:`~PIL.Image.Image.reduce` by the largest factor
    that *divides* each side exactly and leaves at least 3 times the thumbnail's side (1024x768 -> 256x192),
    then a ``BOX`` resize of the rest. Together that takes 0.9 ms instead of 1.3 for one ``BOX`` resize of a
    1024x768 photo, and with exact factors there is no partial box at the edge: a plain ``reduce`` (or
    ``reducing_gap``) leaves one there, which made the hash of a resized copy of Flickr's placeholder drift
    up to 20-32 bits instead of 2-10. (Reducing to only twice the side was as fast but let a resized copy of a
    noisy test picture drift 14 bits instead of 6-8.)
    """
    side = 4 * PHASH_SIZE
    factors = tuple(_exact_factor(extent, extent // (3 * side)) for extent in image.size)
    small = image.reduce(factors) if factors != (1, 1) else image
    return str(imagehash.phash(small.resize((side, side), Image.Resampling.BOX), hash_size=PHASH_SIZE))


def _exact_factor(extent: int, most: int) -> int:
    """The largest divisor of ``extent`` that is at most ``most`` (1 when ``most`` < 2)."""
    return max((f for f in range(1, most + 1) if extent % f == 0), default=1)


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes from :func:`image_phash`."""
    return (int(a, 16) ^ int(b, 16)).bit_count()
