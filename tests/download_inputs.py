"""A download-stage input made from the mirror's own image tables (what select copies into the selection)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.core.io import write_parquet
from pipeline.core.sources import layout
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
