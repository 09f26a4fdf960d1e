"""The official Open Images file layout of each version, as paths under ``source.base_url``.

Open Images re-used files between releases (V5 kept V4's train boxes and image tables, V6 and V7 kept
V5's validation/test boxes), so each version is a table of paths rather than a naming rule.
The mirror serves exactly these paths, and the metadata stage downloads exactly these.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.base.errors import UserError
from pipeline.core.base.params import SUBSETS, VERSIONS

_IMAGES = {
    "train": "2018_04/train/train-images-boxable-with-rotation.csv",
    "validation": "2018_04/validation/validation-images-with-rotation.csv",
    "test": "2018_04/test/test-images-with-rotation.csv",
}
_BOXES_V4 = {
    "train": "2018_04/train/train-annotations-bbox.csv",
    "validation": "2018_04/validation/validation-annotations-bbox.csv",
    "test": "2018_04/test/test-annotations-bbox.csv",
}
_BOXES_V5 = {
    "train": "2018_04/train/train-annotations-bbox.csv",
    "validation": "v5/validation-annotations-bbox.csv",
    "test": "v5/test-annotations-bbox.csv",
}
_BOXES_V6 = {**_BOXES_V5, "train": "v6/oidv6-train-annotations-bbox.csv"}
_HIERARCHY = "2018_04/bbox_labels_600_hierarchy.json"


@dataclass(frozen=True)
class Layout:
    """Relative paths of one Open Images version's metadata files."""

    version: str
    boxes: dict[str, str]
    images: dict[str, str]
    classes: str
    hierarchy: str

    def files(self, subsets: list[str] | tuple[str, ...] = SUBSETS) -> list[str]:
        """Every path needed for ``subsets``, classes and hierarchy first (they are small)."""
        paths = [self.classes, self.hierarchy]
        for subset in subsets:
            paths += [self.images[subset], self.boxes[subset]]
        return paths


LAYOUTS: dict[str, Layout] = {
    "v4": Layout("v4", _BOXES_V4, _IMAGES, "2018_04/class-descriptions-boxable.csv", _HIERARCHY),
    "v5": Layout("v5", _BOXES_V5, _IMAGES, "v5/class-descriptions-boxable.csv", _HIERARCHY),
    "v6": Layout("v6", _BOXES_V6, _IMAGES, "v5/class-descriptions-boxable.csv", _HIERARCHY),
    "v7": Layout("v7", _BOXES_V6, _IMAGES, "v7/oidv7-class-descriptions-boxable.csv", _HIERARCHY),
}


def layout(version: str) -> Layout:
    try:
        return LAYOUTS[version]
    except KeyError:
        raise UserError(f"unknown Open Images version {version!r} (known: {', '.join(VERSIONS)})") from None


def join_url(base_url: str, path: str) -> str:
    return base_url.rstrip("/") + "/" + path.lstrip("/")
