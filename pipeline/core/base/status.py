"""The status vocabulary of the manifests, in one place: what each stage may write, and what follows.

Values are ``StrEnum`` members, so they are plain strings in Parquet and compare equal to them
(``Download.OK == "ok"``); docs/architecture.md describes each one.
"""
from __future__ import annotations

from enum import StrEnum


class Download(StrEnum):
    """``status`` of data/images/manifest.parquet: one per image."""

    OK = "ok"
    PLACEHOLDER = "placeholder"   # Flickr's "photo unavailable" picture
    CHANGED = "changed"           # size or md5 differ from OriginalSize / OriginalMD5 (flickr only)
    NOT_FOUND = "not_found"       # 404
    GONE = "gone"                 # 410
    FORBIDDEN = "forbidden"       # 403
    TOO_LARGE = "too_large"       # over download.max_bytes
    NOT_IMAGE = "not_image"
    BAD_URL = "bad_url"           # not http(s), or redirected to such a URL
    FAILED = "failed"             # retries or the deadline ran out on something transient


#: download statuses whose body is kept on disk, so later stages can crop it or show why it was rejected
KEPT_ON_DISK = frozenset({Download.OK, Download.CHANGED, Download.PLACEHOLDER})
#: the only download status a re-run asks for again: every other one is an answer another request would
#: not change
RETRIED_ON_RERUN = frozenset({Download.FAILED})


class Crop(StrEnum):
    """``status`` of data/crops/manifest.parquet: one per selected box."""

    OK = "ok"
    TOO_SMALL = "too_small"
    CORRUPT = "corrupt"
    TOO_LARGE = "too_large"       # over crop.max_pixels, refused before decoding
    BAD_ROTATION = "bad_rotation"
    BAD_BOX = "bad_box"           # coordinates that are not numbers
    NOT_DOWNLOADED = "not_downloaded"


class Reject(StrEnum):
    """``reject_reason`` of data/clean/manifest.parquet, in the order the rules apply ('' = kept)."""

    NOT_DOWNLOADED = "not_downloaded"
    PLACEHOLDER = "placeholder"
    CHANGED = "changed"
    CORRUPT = "corrupt"
    TOO_LARGE = "too_large"
    BAD_ROTATION = "bad_rotation"
    BAD_BOX = "bad_box"
    TOO_SMALL = "too_small"
    DUPLICATE = "duplicate"
    NEAR_DUPLICATE = "near_duplicate"


#: crop statuses that reject a row under the same name
CROP_REFUSALS = frozenset({Crop.CORRUPT, Crop.TOO_LARGE, Crop.BAD_ROTATION, Crop.BAD_BOX, Crop.TOO_SMALL})
