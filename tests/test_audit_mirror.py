"""The audit stage on the real crops of the mirror's photos: what the mirror planted is found, grey photos stay.

The mirror plants a blurry, a dark, a flat and a mislabelled photo (a Sandwich drawing boxed as Hamburger)
next to its greyscale one (``mirror.truth``'s ``expected_audit``); crop and clean run on the photos as served,
then the audit stage with the shipped defaults.
"""
from __future__ import annotations

import pandas as pd
import pytest
import yaml
from clean_inputs import inside
from crop_inputs import write_inputs
from trainkit import needs_offline_weights

from pipeline.core.audit.ledger import QUALITY
from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import write_parquet
from pipeline.core.base.params import AuditParams, CleanParams, CropParams
from pipeline.mirror import Mirror
from pipeline.stages.audit import __main__ as audit_stage
from pipeline.stages.clean import stage as clean
from pipeline.stages.crop import stage as crop

CROP = CropParams(min_side=16)


@pytest.fixture(scope="module")
def ledger(mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The audit stage's ledger of the mirror's clean crops, joined with what the mirror says of each photo."""
    root = tmp_path_factory.mktemp("audit-mirror")
    boxes, downloads = write_inputs(mirror, root)
    crops = crop.crop_all(boxes, downloads, CROP, 1, images_dir=root / paths.IMAGES_DIR,
                          crops_dir=root / paths.CROPS_DIR)
    manifest = clean.clean(crops, downloads, CleanParams(), CROP, crops_dir=root / paths.CROPS_DIR)
    write_parquet(manifest, root / paths.CLEAN_MANIFEST)
    (root / "params.yaml").write_text(yaml.safe_dump({"runtime": {"device": "cpu"}}))
    with inside(root):
        assert run_cli(audit_stage.main, []) == 0
    truth = mirror.truth[["ImageID", "fault", "expected_audit", "LabelNames"]]
    return pd.read_parquet(root / paths.AUDIT_LEDGER).merge(truth, on="ImageID", how="left")


@needs_offline_weights
@pytest.mark.parametrize("fault", ["blurry", "dark", "flat", "mislabelled"])
def test_planted_photos_are_found_with_their_issue(ledger: pd.DataFrame, fault: str) -> None:
    rows = ledger[ledger["fault"] == fault]
    assert len(rows) == 1, f"clean did not keep the {fault} photo's crop"
    row = rows.iloc[0]
    expected = row["expected_audit"]
    assert row["issue"] == expected, row.to_dict()
    action = getattr(AuditParams(), expected)
    assert row["decision"] == {"reject": "rejected", "flag": "flagged"}[action], row.to_dict()


@needs_offline_weights
def test_the_mislabelled_crop_gets_the_label_it_shows(ledger: pd.DataFrame) -> None:
    row = ledger[ledger["fault"] == "mislabelled"].iloc[0]
    assert (row["Label"], row["suggested_label"]) == ("Hamburger", "Sandwich"), row.to_dict()


@needs_offline_weights
def test_grey_photos_are_kept_and_no_other_crop_is_rejected(ledger: pd.DataFrame) -> None:
    grey = ledger[ledger["fault"] == "greyscale"]
    assert len(grey) and (grey["decision"] != "rejected").all(), grey.to_dict("records")
    assert not grey["issue"].isin(QUALITY).any(), grey.to_dict("records")
    planted = ledger["expected_audit"].fillna("") != ""
    assert (ledger.loc[~planted, "decision"] != "rejected").all(), ledger[~planted & (ledger["decision"] == "rejected")]
