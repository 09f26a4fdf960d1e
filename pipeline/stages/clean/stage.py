"""The clean stage: judge every crop, keep the usable ones, and say why each other one goes.

One row per selected box (the crop manifest) plus ``keep``, ``reject_reason``, ``detail``, ``sha256`` and
``dup_group``; the first rule that applies decides: not_downloaded, placeholder, changed, corrupt,
too_small, duplicate, near_duplicate. Near duplicates are judged by photo, not by crop, and all copies but
one per group are rejected. The rules and why: docs/architecture.md ("clean").
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.base import manifests, paths
from pipeline.core.base.io import write_parquet
from pipeline.core.base.params import CleanParams, CropParams, Params
from pipeline.core.base.progress import Progress
from pipeline.core.base.safe import join_inside
from pipeline.core.base.stages import Summary
from pipeline.core.base.status import CROP_REFUSALS, Crop, Download, Reject
from pipeline.core.images.groups import connected_groups
from pipeline.core.images.imaging import ImageProblem, hamming, load_image
from pipeline.core.images.placeholder import PLACEHOLDER_MD5S, PLACEHOLDER_PHASHES


def photo_verdict(row: Any, params: CleanParams) -> tuple[str, str]:
    """``(reject_reason, detail)`` of one row (from ``itertuples``): what is known about its photo and crop."""
    if row.status == Crop.NOT_DOWNLOADED:
        return Reject.NOT_DOWNLOADED, row.reason
    if row.download_status == Download.PLACEHOLDER:
        return Reject.PLACEHOLDER, row.download_reason or "the download was redirected to Flickr's placeholder"
    if row.md5 in PLACEHOLDER_MD5S:
        return Reject.PLACEHOLDER, f"the file is a known placeholder (md5 {row.md5})"
    distance = placeholder_distance(row.image_phash)
    if distance is not None and distance <= params.placeholder_distance:
        return Reject.PLACEHOLDER, f"looks like Flickr's placeholder (perceptual hash {distance} bits away)"
    if row.download_status == Download.CHANGED:
        return Reject.CHANGED, row.download_reason or "md5 or size differ from OriginalMD5 / OriginalSize"
    if row.status in CROP_REFUSALS:
        return row.status, row.reason
    return "", ""


def placeholder_distance(phash: str) -> int | None:
    """Bits between a photo's perceptual hash and the nearest placeholder's; None when the photo has none."""
    return min(hamming(phash, ref) for ref in PLACEHOLDER_PHASHES) if phash else None


def crop_verdict(path: Path | None, min_side: int, max_pixels: int) -> tuple[str, str, str]:
    """``(reject_reason, detail, sha256)`` of one crop file: it must exist, fully decode and be big enough."""
    if path is None:
        return Reject.CORRUPT, "the crop's path is not inside data/crops", ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Reject.CORRUPT, f"crop file unreadable: {exc.strerror}", ""
    sha256 = hashlib.sha256(data).hexdigest()
    try:
        image = load_image(data, max_pixels)
    except ImageProblem as exc:
        return Reject.CORRUPT, f"crop file: {exc}", sha256
    if min(image.size) < min_side:
        return Reject.TOO_SMALL, f"crop is {image.width}x{image.height} px, under crop.min_side={min_side}", sha256
    return "", "", sha256


def hash_bits(hashes: Sequence[str]) -> np.ndarray:
    """Hex hashes of one length -> an ``(n, bits)`` boolean array."""
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8).reshape(len(hashes), -1)
    return np.unpackbits(raw, axis=1).astype(bool)


def near_pairs(bits: np.ndarray, max_distance: int) -> np.ndarray:
    """``(k, 2)`` index pairs ``i < j`` of rows of ``bits`` that differ in at most ``max_distance`` places.

    Pigeonhole (multi-index hashing): cut the hash into ``max_distance + 1`` blocks; two hashes that differ in
    at most ``max_distance`` bits agree exactly on at least one block, so only rows that share a block's value
    are compared. Near-linear for real photos, where comparing all pairs would be quadratic.
    """
    width = bits.shape[1]
    bounds = np.linspace(0, width, min(max_distance + 1, width) + 1).astype(int)
    packed = np.packbits(bits, axis=1)
    found: set[tuple[int, int]] = set()
    for low, high in zip(bounds[:-1], bounds[1:]):
        _, bucket = np.unique(np.packbits(bits[:, low:high], axis=1), axis=0, return_inverse=True)
        bucket = bucket.ravel()
        order = np.argsort(bucket, kind="stable")
        for members in np.split(order, np.flatnonzero(np.diff(bucket[order])) + 1):
            if len(members) > 1:
                found.update(_close(packed, members, max_distance))
    return np.array(sorted(found), dtype=np.int64).reshape(-1, 2)


def _close(packed: np.ndarray, members: np.ndarray, max_distance: int) -> Iterator[tuple[int, int]]:
    """Pairs of ``members`` within ``max_distance`` bits, compared in row chunks of bounded memory."""
    step = max(1, 2**24 // (len(members) * packed.shape[1]))
    for start in range(0, len(members), step):
        rows = members[start:start + step]
        distance = np.bitwise_count(packed[rows, None, :] ^ packed[None, members, :]).sum(axis=2)
        for a, b in zip(*np.nonzero(distance <= max_distance)):
            if rows[a] < members[b]:
                yield int(rows[a]), int(members[b])


def mark_duplicates(rows: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Reject exact duplicate crops (sha256) and the crops of near-duplicate photos (``image_phash``).

    Crops still kept are ordered so the one to keep comes first: crops of the photo with the most crop
    pixels (the larger copy), then ImageID, then the bigger crop, then BoxIndex. Ties: crops with equal bytes,
    and all crops of two photos within ``max_distance`` bits (-1: photos are never compared). In each
    connected group the first crop leads: a crop whose bytes repeat an earlier one is a ``duplicate``, a crop
    of another photo than the leader's a ``near_duplicate``; the leader's photo keeps its other crops.
    """
    survivors = rows[rows["reject_reason"] == ""]
    area = survivors["width"] * survivors["height"]
    survivors = survivors.assign(area=area, photo_area=area.groupby(survivors["ImageID"]).transform("sum"))
    survivors = survivors.sort_values(["photo_area", "ImageID", "area", "BoxIndex"],
                                      ascending=[False, True, False, True], kind="stable")
    edges = [chain for chain in survivors.groupby("sha256", sort=False).indices.values() if len(chain) > 1]
    if max_distance >= 0 and len(survivors) > 1:
        photos = survivors.groupby("ImageID", sort=False).indices  # positions of each photo's crops
        names = list(photos)
        hashes = survivors.groupby("ImageID", sort=False)["image_phash"].first()[names]
        for i, j in near_pairs(hash_bits(list(hashes)), max_distance):
            edges.append(np.concatenate([photos[names[i]], photos[names[j]]]))
    if not edges:
        return rows
    first = np.concatenate([chain[:-1] for chain in edges])
    second = np.concatenate([chain[1:] for chain in edges])
    n = len(survivors)
    component = connected_groups(n, first, second)
    return _reject_copies(rows, survivors, component)


def _reject_copies(rows: pd.DataFrame, survivors: pd.DataFrame, component: np.ndarray) -> pd.DataFrame:
    """Name each group after its first crop; reject the repeats and the other photos' crops, saying why."""
    keys = (survivors["ImageID"] + "_" + survivors["BoxIndex"].astype(str)).tolist()
    sizes = np.bincount(component)
    leader: dict[int, int] = {}
    seen: dict[tuple[int, str], int] = {}  # (group, sha256) -> first position with those bytes
    for position, (index, group, image, sha256, phash) in enumerate(zip(
            survivors.index, component, survivors["ImageID"], survivors["sha256"], survivors["image_phash"])):
        if sizes[group] < 2:
            continue
        lead = leader.setdefault(group, position)
        rows.at[index, "dup_group"] = keys[lead]
        same = seen.setdefault((group, sha256), position)
        if same != position:
            rows.loc[index, ["reject_reason", "detail"]] = [Reject.DUPLICATE, f"same bytes as {keys[same]}"]
        elif image != survivors["ImageID"].iat[lead]:
            kept, bits = survivors["ImageID"].iat[lead], hamming(phash, survivors["image_phash"].iat[lead])
            rows.loc[index, ["reject_reason", "detail"]] = [
                Reject.NEAR_DUPLICATE, f"its photo looks like {kept}'s ({bits} of 256 bits differ)"]
    return rows


def clean(crops: pd.DataFrame, downloads: pd.DataFrame, params: CleanParams, crop: CropParams,
          crops_dir: Path = paths.CROPS_DIR) -> pd.DataFrame:
    """The clean manifest: the crop manifest plus the verdict columns."""
    manifests.CROPS.require(crops, ("ImageID", "BoxIndex", "status", "reason", "crop_path", "image_phash", "download_status"))
    got = downloads.drop_duplicates("ImageID", keep="last").set_index("ImageID")
    rows = crops.reset_index(drop=True)
    rows = rows.assign(
        md5=rows["ImageID"].map(got["md5"]).fillna("") if "md5" in got else "",
        download_reason=rows["ImageID"].map(got["reason"]).fillna("") if "reason" in got else "",
        sha256="", dup_group="",
    )
    verdicts = [photo_verdict(row, params) for row in rows.itertuples()]
    rows["reject_reason"] = [v[0] for v in verdicts]
    rows["detail"] = [v[1] for v in verdicts]
    todo = rows.index[rows["reject_reason"] == ""]
    with Progress(len(todo), "clean", "crop") as bar:
        checked = []
        for rel in rows.loc[todo, "crop_path"]:
            checked.append(crop_verdict(join_inside(crops_dir, rel), crop.min_side, crop.max_pixels))
            bar.update()
    for column, values in zip(("reject_reason", "detail", "sha256"), zip(*checked)):
        rows.loc[todo, column] = list(values)
    rows = mark_duplicates(rows, params.near_duplicate_distance)
    rows["keep"] = rows["reject_reason"] == ""
    return rows[[*crops.columns, *manifests.CLEAN.columns[len(manifests.CROPS.columns):]]]


@dataclass(frozen=True)
class CleanSummary(Summary):
    """How many crops were judged and kept, and how many went for each reason."""

    crops: int
    kept: int
    rejected: dict[str, int]

    def lines(self) -> list[str]:
        reasons = "".join(f"; {n} {reason}" for reason, n in self.rejected.items())
        return [f"{self.kept} of {self.crops} crops kept in {paths.CLEAN_MANIFEST}{reasons}"]


def run(params: Params) -> CleanSummary:
    """The stage: every crop of the crop manifest judged, into ``data/clean/manifest.parquet``."""
    manifest = clean(manifests.CROPS.read(), manifests.IMAGES.read(), params.clean, params.crop)
    write_parquet(manifest, paths.CLEAN_MANIFEST)
    rejected = manifest.loc[~manifest["keep"], "reject_reason"].value_counts()
    return CleanSummary(len(manifest), int(manifest["keep"].sum()), {str(r): int(n) for r, n in rejected.items()})
