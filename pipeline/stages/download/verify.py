"""Is a downloaded body the photo Open Images meant? Placeholder, non-image and changed-file checks.

Flickr answers a deleted photo with a redirect to a "photo unavailable" PNG, and keeps serving photos
whose owner replaced the file; both come back as HTTP 200 with an image body, so only these checks stop
them from entering the dataset as if they were the original. The file extension comes from the bytes
(magic numbers), never from the URL, which the metadata (from the internet) could make say anything.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import math
import numbers
from dataclasses import dataclass

from pipeline.core.base.status import KEPT_ON_DISK, Download
from pipeline.core.images.placeholder import PLACEHOLDER_MD5S, is_placeholder_url

#: The image formats Open Images' originals come in, by their magic numbers.
IMAGE_EXTENSIONS = ("jpg", "png", "gif", "webp")


@dataclass(frozen=True)
class Verdict:
    """What a body is: ``status`` (ok, changed, placeholder, not_image), why, its md5 and extension."""

    status: str
    reason: str
    md5: str
    ext: str | None

    @property
    def keep(self) -> bool:
        """Bodies kept on disk: usable ones, and rejected ones later stages show (changed, placeholder)."""
        return self.ext is not None and self.status in KEPT_ON_DISK


def sniff_extension(body: bytes) -> str | None:
    """The image format of ``body`` from its first bytes, or None when it is not an image we keep."""
    if body.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if body.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if body.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if body[:4] == b"RIFF" and body[8:12] == b"WEBP":
        return "webp"
    return None


def md5_hex_from_base64(value: object) -> str | None:
    """Open Images stores OriginalMD5 as base64 of the 16-byte digest; None when absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == 16 else None


def verify(body: bytes, final_url: str, expected_md5_b64: object = None, expected_size: object = None) -> Verdict:
    """Judge ``body`` (fetched from ``final_url`` after redirects) against the metadata, if any.

    ``expected_*`` come from the image table for Flickr originals; for CVDF's resized copies they are
    None and only the placeholder and image checks apply.
    """
    md5 = hashlib.md5(body).hexdigest()
    ext = sniff_extension(body)
    if is_placeholder_url(final_url):
        return Verdict(Download.PLACEHOLDER, "redirected to Flickr's photo-unavailable image", md5, ext)
    if md5 in PLACEHOLDER_MD5S:
        return Verdict(Download.PLACEHOLDER, "body is a known placeholder image", md5, ext)
    if ext is None:
        return Verdict(Download.NOT_IMAGE, f"body is not a jpg/png/gif/webp image (starts {body[:8]!r})", md5, None)
    want_md5 = md5_hex_from_base64(expected_md5_b64)
    want_size = _size(expected_size)
    if want_size is not None and want_size != len(body):
        return Verdict(Download.CHANGED, f"{len(body)} bytes, OriginalSize says {want_size}", md5, ext)
    if want_md5 is not None and want_md5 != md5:
        return Verdict(Download.CHANGED, "md5 differs from OriginalMD5", md5, ext)
    return Verdict(Download.OK, "", md5, ext)


def _size(value: object) -> int | None:
    """OriginalSize as an int (numpy's too); None when missing (NaN/None) or not a positive whole number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    if not math.isfinite(value) or value <= 0 or value != int(value):
        return None
    return int(value)
