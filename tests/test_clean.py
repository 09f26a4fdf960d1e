"""pipeline.stages.clean on the mirror's photos: every rejection has its reason, real photos (grey ones too) stay."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from crop_inputs import write_inputs
from PIL import Image

from pipeline.core.base import manifests, paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import write_parquet
from pipeline.core.base.params import CleanParams, CropParams
from pipeline.core.images.imaging import image_phash, load_image, to_rgb
from pipeline.core.images.placeholder import PLACEHOLDER_MD5S, PLACEHOLDER_PHASHES
from pipeline.mirror import Mirror, drawing
from pipeline.stages.clean import stage as clean
from pipeline.stages.clean.__main__ import main as clean_main
from pipeline.stages.crop import stage as crop

MAX_PIXELS = 10**8
CROP = CropParams(min_side=16, max_pixels=MAX_PIXELS)


def run_crop_and_clean(root: Path, boxes: pd.DataFrame, downloads: pd.DataFrame,
                       params: CleanParams = CleanParams()) -> pd.DataFrame:
    crops = crop.crop_all(boxes, downloads, CropParams(min_side=16), 1,
                          images_dir=root / paths.IMAGES_DIR, crops_dir=root / paths.CROPS_DIR)
    return clean.clean(crops, downloads, params, CROP, crops_dir=root / paths.CROPS_DIR)


@pytest.fixture(scope="module")
def prepared(mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """The mirror's photos downloaded (as download would keep them) and cropped: (root, crops, downloads)."""
    root = tmp_path_factory.mktemp("clean")
    boxes, downloads = write_inputs(mirror, root)
    crops = crop.crop_all(boxes, downloads, CropParams(min_side=16), 2,
                          images_dir=root / paths.IMAGES_DIR, crops_dir=root / paths.CROPS_DIR)
    return root, crops, downloads


@pytest.fixture(scope="module")
def verdicts(mirror: Mirror, prepared: tuple[Path, pd.DataFrame, pd.DataFrame]) -> pd.DataFrame:
    root, crops, downloads = prepared
    manifest = clean.clean(crops, downloads, CleanParams(), CROP, crops_dir=root / paths.CROPS_DIR)
    truth = mirror.truth[["ImageID", "fault", "expected_reject", "duplicate_of"]]
    return manifest.merge(truth, on="ImageID", how="left")


def reasons(verdicts: pd.DataFrame, fault: str) -> set[str]:
    rows = verdicts[verdicts["fault"] == fault]
    assert len(rows), f"no box of the {fault} image"
    return set(rows["reject_reason"])


def test_every_photo_gets_the_verdict_the_mirror_expects(verdicts: pd.DataFrame) -> None:
    single = verdicts[~verdicts["fault"].isin(["duplicate", "near_duplicate"])]
    wrong = single[single["reject_reason"] != single["expected_reject"]]
    assert wrong.empty, wrong[["ImageID", "fault", "reject_reason", "detail"]].to_string()
    assert set(single["expected_reject"]) >= {"", "not_downloaded", "placeholder", "changed", "corrupt"}
    assert (single["keep"] == (single["reject_reason"] == "")).all()
    assert (single.loc[~single["keep"], "detail"] != "").all()  # every rejection says why


def test_placeholder_and_changed_originals_are_rejected_with_their_reasons(verdicts: pd.DataFrame) -> None:
    assert reasons(verdicts, "placeholder") == {"placeholder"}
    assert verdicts.loc[verdicts["fault"] == "placeholder", "detail"].str.contains("photo_unavailable").all()
    assert reasons(verdicts, "changed") == {"changed"}
    assert verdicts.loc[verdicts["fault"] == "changed", "detail"].str.contains("md5").all()


def test_greyscale_cmyk_png_and_rotated_photos_are_kept(verdicts: pd.DataFrame) -> None:
    for fault in ("greyscale", "cmyk", "png", "exif_rotated", "rotation90"):
        assert reasons(verdicts, fault) == {""}, fault


def test_corrupt_photo_is_rejected(verdicts: pd.DataFrame) -> None:
    assert reasons(verdicts, "corrupt") == {"corrupt"}
    assert verdicts.loc[verdicts["fault"] == "corrupt", "detail"].str.contains("decode failed").all()


@pytest.mark.parametrize("fault", ["duplicate", "near_duplicate"])
def test_one_copy_is_kept_and_the_pair_shares_a_group(verdicts: pd.DataFrame, fault: str) -> None:
    pair = verdicts[verdicts["fault"] == fault]
    assert pair["ImageID"].nunique() == 2
    assert sorted(pair["reject_reason"]) == ["", fault]
    assert pair["dup_group"].nunique() == 1 and pair["dup_group"].iloc[0] in {
        f"{r.ImageID}_{r.BoxIndex}" for r in pair[pair["keep"]].itertuples()}
    if fault == "near_duplicate":  # the copy is smaller: the larger original is the one kept
        assert pair.loc[pair["keep"], "duplicate_of"].iloc[0] == ""
    others = verdicts[~verdicts["fault"].isin(["duplicate", "near_duplicate"])]
    assert (others["dup_group"] == "").all()  # different photos of one food are not near duplicates


def test_picture_match_and_known_md5_catch_placeholders_served_as_ok(
        prepared: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    """A placeholder re-encoded as JPEG (no redirect, no known md5) and a file with the real placeholder's md5."""
    root, crops, downloads = prepared
    shutil.copytree(root / "data", tmp_path / "data")
    boxes = pd.read_parquet(tmp_path / paths.SELECTED)
    downloads = downloads.copy()
    ok = downloads.index[downloads["status"] == "ok"]
    lookalike, known = downloads.loc[ok[0], "ImageID"], downloads.loc[ok[1], "ImageID"]
    placeholder = Image.open(io.BytesIO(drawing.placeholder_png())).convert("RGB")
    placeholder.resize((400, 299)).save(tmp_path / paths.IMAGES_DIR / downloads.loc[ok[0], "path"], "JPEG", quality=70)
    downloads.loc[ok[1], "md5"] = next(iter(PLACEHOLDER_MD5S))
    manifest = run_crop_and_clean(tmp_path, boxes, downloads).set_index("ImageID")
    assert set(manifest.loc[[lookalike], "reject_reason"]) == {"placeholder"}
    assert manifest.loc[[lookalike], "detail"].str.contains("looks like Flickr's placeholder").all()
    assert set(manifest.loc[[known], "reject_reason"]) == {"placeholder"}
    assert manifest.loc[[known], "detail"].str.contains("known placeholder").all()


def test_placeholder_reference_hash_is_the_drawings() -> None:
    drawn = image_phash(to_rgb(load_image(drawing.placeholder_png(), MAX_PIXELS)))
    assert PLACEHOLDER_PHASHES == (drawn,)


def test_a_crop_file_that_does_not_decode_is_corrupt(
        prepared: tuple[Path, pd.DataFrame, pd.DataFrame], tmp_path: Path) -> None:
    root, crops, downloads = prepared
    shutil.copytree(root / paths.CROPS_DIR, tmp_path / "crops")
    victim = crops[crops["status"] == "ok"].iloc[0]
    (tmp_path / "crops" / victim["crop_path"]).write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    manifest = clean.clean(crops, downloads, CleanParams(), CROP, crops_dir=tmp_path / "crops")
    row = manifest[(manifest["ImageID"] == victim["ImageID"]) & (manifest["BoxIndex"] == victim["BoxIndex"])].iloc[0]
    assert row["reject_reason"] == "corrupt" and row["detail"].startswith("crop file")
    assert (manifest.loc[manifest["ImageID"] != victim["ImageID"], "reject_reason"] != "corrupt").sum() > 0


def test_min_side_and_near_duplicates_off(prepared: tuple[Path, pd.DataFrame, pd.DataFrame],
                                                 verdicts: pd.DataFrame) -> None:
    root, crops, downloads = prepared
    strict = clean.clean(crops, downloads, CleanParams(near_duplicate_distance=-1),
                         CropParams(min_side=120, max_pixels=MAX_PIXELS),
                         crops_dir=root / paths.CROPS_DIR)
    small = strict[strict["reject_reason"] == "too_small"]
    assert len(small) and small["detail"].str.contains("crop.min_side=120").all()
    assert (small[["width", "height"]].min(axis=1) < 120).all()
    near = strict.merge(verdicts[["ImageID", "BoxIndex", "fault"]], on=["ImageID", "BoxIndex"])
    assert "near_duplicate" not in set(near["reject_reason"])
    assert "duplicate" in set(near.loc[near["fault"] == "duplicate", "reject_reason"])  # exact copies still go


def test_verdicts_do_not_depend_on_row_order(prepared: tuple[Path, pd.DataFrame, pd.DataFrame],
                                             verdicts: pd.DataFrame) -> None:
    root, crops, downloads = prepared
    shuffled = crops.sample(frac=1.0, random_state=1)
    again = clean.clean(shuffled, downloads, CleanParams(), CROP, crops_dir=root / paths.CROPS_DIR)
    key = ["ImageID", "BoxIndex"]
    first = verdicts[list(again.columns)].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(again.sort_values(key).reset_index(drop=True), first)


@pytest.mark.parametrize("distance", [0, 3, 16, 40])
def test_near_pairs_finds_exactly_the_brute_force_pairs(distance: int) -> None:
    rng = np.random.default_rng(distance)
    bits = rng.random((300, 256)) < 0.5
    for i in range(0, 60, 2):  # plant pairs at 0..distance+2 bits apart
        bits[i + 1] = bits[i]
        flip = rng.choice(256, size=int(rng.integers(0, distance + 3)), replace=False)
        bits[i + 1, flip] ^= True
    apart = (bits[:, None, :] != bits[None, :, :]).sum(axis=2)
    expected = {(i, j) for i, j in zip(*np.nonzero(apart <= distance)) if i < j}
    assert {tuple(p) for p in clean.near_pairs(bits, distance).tolist()} == expected
    assert len(expected) >= 10


def test_cli_help_and_missing_inputs(workspace: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        clean_main(["--help"])
    assert done.value.code == 0 and "placeholder" in capsys.readouterr().out
    assert run_cli(clean_main, []) == 2
    assert capsys.readouterr().err.startswith("error: data/crops/manifest.parquet not found")


def test_cli_writes_the_clean_manifest(prepared: tuple[Path, pd.DataFrame, pd.DataFrame], workspace: object,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    root, crops, downloads = prepared
    shutil.copytree(root / "data", Path.cwd() / "data")
    write_parquet(crops, paths.CROPS_MANIFEST)
    assert run_cli(clean_main, []) == 0
    manifest = pd.read_parquet(paths.CLEAN_MANIFEST)
    assert list(manifest.columns) == list(manifests.CLEAN.columns)
    assert f"{int(manifest['keep'].sum())} of {len(manifest)} crops kept" in capsys.readouterr().out
