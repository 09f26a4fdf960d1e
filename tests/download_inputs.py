"""Download-stage inputs made from the mirror's own image tables (what select copies into the selection)."""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from crop_inputs import write_inputs

from pipeline.core.base import paths
from pipeline.core.base.io import write_parquet
from pipeline.core.net.sources import layout
from pipeline.mirror import Mirror


def write_selection(m: Mirror, boxes_per_image: int = 2, where: Path = Path("data/selected.parquet")) -> pd.DataFrame:
    """``data/selected.parquet`` for every mirror image, ``boxes_per_image`` rows each (as an image with that
    many selected boxes); returns the image table rows, one per image."""
    tables = [pd.read_csv(f"{m.base_url}/{path}", dtype={"ImageID": str})
              for path in layout("v6").images.values()]
    images = pd.concat(tables, ignore_index=True)
    images = images[images["ImageID"].isin(m.truth["ImageID"])]
    selected = pd.concat([images] * boxes_per_image, ignore_index=True).assign(Label="Hamburger")
    write_parquet(selected, where)
    return images


def write_boxes_and_images(mirror: Mirror, where: Path, labels: Sequence[str] | None = None) -> pd.DataFrame:
    """``data/selected.parquet`` under ``where`` as select writes it: each box of the mirror's labels (or only of
    ``labels``, display names) with its image's columns; returns it."""
    boxes, _ = write_inputs(mirror, where / "scratch")
    if labels is not None:
        boxes = boxes[boxes["Label"].isin(labels)]
    tables = [pd.read_csv(f"{mirror.base_url}/{path}", dtype={"ImageID": str}) for path in layout("v6").images.values()]
    images = pd.concat(tables, ignore_index=True).drop_duplicates("ImageID")
    selected = boxes.merge(images[["ImageID", "OriginalURL", "OriginalSize", "OriginalMD5"]], on="ImageID")
    write_parquet(selected, where / paths.SELECTED)
    shutil.rmtree(where / "scratch")
    return selected
