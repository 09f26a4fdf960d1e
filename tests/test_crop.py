"""pipeline.stages.crop on the mirror's photos: boxes land on their objects, upright, in the right colours."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from crop_inputs import mirror_records, write_inputs
from PIL import Image

from pipeline.core.base import manifests, paths
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.params import CropParams
from pipeline.mirror import Mirror, drawing
from pipeline.stages.crop import stage as crop
from pipeline.stages.crop.__main__ import main as crop_main


def marker_corner(image: Image.Image) -> str:
    """Where the mirror's blue orientation marker sits in a crop: 'top-left' when the object is upright."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    target = np.array(drawing.MARKER_RGB)
    blue = np.abs(pixels - target).max(axis=2) < 40
    assert blue.mean() > 0.01, "no marker in the crop: the box missed its object"
    ys, xs = np.nonzero(blue)
    height, width = blue.shape
    return ("top" if ys.mean() < height / 2 else "bottom") + "-" + ("left" if xs.mean() < width / 2 else "right")


@pytest.fixture(scope="module")
def cropped(mirror: Mirror, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """The mirror's photos cropped once by a pool of two workers: (root, manifest joined with the truth)."""
    root = tmp_path_factory.mktemp("crop")
    boxes, downloads = write_inputs(mirror, root)
    manifest = crop.crop_all(boxes, downloads, CropParams(min_side=16), 2,
                             images_dir=root / paths.IMAGES_DIR, crops_dir=root / paths.CROPS_DIR)
    return root, manifest.merge(mirror.truth[["ImageID", "fault"]], on="ImageID", how="left")


def crops_of(cropped: tuple[Path, pd.DataFrame], fault: str) -> list[Image.Image]:
    root, manifest = cropped
    rows = manifest[(manifest["fault"] == fault) & (manifest["status"] == "ok")]
    assert len(rows), f"no crop of the {fault} image"
    return [Image.open(root / paths.CROPS_DIR / rel) for rel in rows["crop_path"]]


@pytest.mark.parametrize("fault", ["exif_rotated", "rotation90"])
def test_rotated_photos_give_upright_crops_of_the_object(cropped: tuple[Path, pd.DataFrame], fault: str) -> None:
    for image in crops_of(cropped, fault):
        assert marker_corner(image) == "top-left"
        assert "exif" not in image.info and not image.getexif()  # no viewer turns our crops again


def test_every_crop_lands_on_its_object_upright(cropped: tuple[Path, pd.DataFrame]) -> None:
    """All photos whose pixels match their boxes and show colour (not grey, replaced or a placeholder, nor
    spoiled for the audit on purpose: blurred, darkened, a flat box)."""
    root, manifest = cropped
    unmarked = ["greyscale", "changed", "placeholder", "blurry", "dark", "flat"]
    ok = manifest[(manifest["status"] == "ok") & ~manifest["fault"].isin(unmarked)]
    assert len(ok) > 20
    for rel in ok["crop_path"]:
        assert marker_corner(Image.open(root / paths.CROPS_DIR / rel)) == "top-left", rel


def test_cmyk_crop_has_the_photos_colours(mirror: Mirror, cropped: tuple[Path, pd.DataFrame]) -> None:
    """The CVDF copy is the same pixel matrix saved as RGB: the same box cut from it must look the same."""
    root, manifest = cropped
    row = manifest[(manifest["fault"] == "cmyk") & (manifest["status"] == "ok")].iloc[0]
    record = next(r for r in mirror_records(mirror) if r.ImageID == row["ImageID"])
    assert Image.open(mirror.root / record.served).mode == "CMYK"
    reference = Image.open(mirror.root / record.cvdf).convert("RGB")
    box = next(b for b in record.boxes if b.LabelName == row["LabelName"])
    expected = reference.crop(crop.pixel_box(reference.size, box.XMin, box.XMax, box.YMin, box.YMax))
    ours = Image.open(root / paths.CROPS_DIR / row["crop_path"])
    assert ours.mode == "RGB" and ours.size == expected.size
    difference = np.abs(np.asarray(ours, dtype=int) - np.asarray(expected, dtype=int)).mean()
    assert difference < 6, difference  # JPEG noise only; inverted CMYK would be ~100 off


def test_greyscale_and_alpha_png_become_rgb(cropped: tuple[Path, pd.DataFrame]) -> None:
    for image in crops_of(cropped, "greyscale"):
        pixels = np.asarray(image, dtype=int)
        assert image.mode == "RGB" and np.abs(pixels[..., 0] - pixels[..., 2]).max() <= 8 and pixels.std() > 10
    for image in crops_of(cropped, "png"):
        assert image.mode == "RGB" and image.format == "JPEG"


def test_manifest_has_a_row_and_a_reason_for_every_box(cropped: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = cropped
    selected = pd.read_parquet(root / paths.SELECTED)
    assert list(manifest.columns[:len(manifests.CROPS.columns)]) == list(manifests.CROPS.columns)
    assert len(manifest) == len(selected)
    assert set(zip(manifest["ImageID"], manifest["BoxIndex"])) == set(zip(selected["ImageID"], selected["BoxIndex"]))
    gone = manifest[manifest["fault"].isin(["not_found", "gone", "forbidden", "not_image", "bad_url"])]
    assert len(gone) and (gone["status"] == "not_downloaded").all()
    assert all(r.reason.startswith(r.download_status) and r.download_status for r in gone.itertuples())
    broken = manifest[manifest["fault"] == "corrupt"]
    assert (broken["status"] == "corrupt").all() and broken["reason"].str.contains("decode failed").all()
    ok = manifest[manifest["status"] == "ok"]
    assert (ok["image_phash"].str.len() == 64).all() and (ok["width"] > 0).all()
    assert (manifest.loc[manifest["status"] != "ok", "crop_path"] == "").all()


def test_crops_folder_holds_exactly_the_manifests_crops(cropped: tuple[Path, pd.DataFrame]) -> None:
    root, manifest = cropped
    on_disk = {p.relative_to(root / paths.CROPS_DIR).as_posix() for p in (root / paths.CROPS_DIR).rglob("*.jpg")}
    assert on_disk == set(manifest.loc[manifest["status"] == "ok", "crop_path"])
    assert {p.split("/")[0] for p in on_disk} == {"Hamburger", "Sandwich"}
    assert not list((root / paths.CROPS_DIR).rglob(".*"))  # no temporary files left behind


def test_one_worker_and_a_pool_write_the_same_bytes(mirror: Mirror, cropped: tuple[Path, pd.DataFrame],
                                                    tmp_path: Path) -> None:
    root, pooled = cropped
    boxes, downloads = write_inputs(mirror, tmp_path)
    alone = crop.crop_all(boxes, downloads, CropParams(min_side=16), 1,
                          images_dir=tmp_path / paths.IMAGES_DIR, crops_dir=tmp_path / paths.CROPS_DIR)
    pd.testing.assert_frame_equal(alone, pooled[alone.columns])
    for rel in alone.loc[alone["status"] == "ok", "crop_path"]:
        assert (tmp_path / paths.CROPS_DIR / rel).read_bytes() == (root / paths.CROPS_DIR / rel).read_bytes()


def test_params_skip_shrink_pad_and_refuse(mirror: Mirror, tmp_path: Path) -> None:
    boxes, downloads = write_inputs(mirror, tmp_path)
    crops_dir = tmp_path / paths.CROPS_DIR

    def run(**params: object) -> pd.DataFrame:
        return crop.crop_all(boxes, downloads, CropParams(**params), 1,
                             images_dir=tmp_path / paths.IMAGES_DIR, crops_dir=crops_dir)

    plain = run(min_side=16)
    small = run(min_side=100)
    skipped = small[small["status"] == "too_small"]
    assert len(skipped) and skipped["reason"].str.contains("crop.min_side=100").all()
    assert (skipped[["width", "height"]].min(axis=1) < 100).all()
    on_disk = {p.name for p in crops_dir.rglob("*.jpg")}
    assert len(on_disk) == (small["status"] == "ok").sum()
    assert not on_disk & {f"{r.ImageID}_{r.BoxIndex}.jpg" for r in skipped.itertuples()}  # no stale crop
    shrunk = run(min_side=16, max_side=64)
    assert shrunk.loc[shrunk["status"] == "ok", ["width", "height"]].max(axis=1).eq(64).all()
    padded = run(min_side=16, padding=0.1)
    grown = padded.merge(plain, on=["ImageID", "BoxIndex"], suffixes=("", "_plain"))
    grown = grown[grown["status"] == "ok"]
    assert (grown["width"] >= grown["width_plain"]).all() and (grown["width"] > grown["width_plain"]).any()
    capped = run(min_side=16, max_pixels=10_000)
    downloaded = capped[capped["status"] != "not_downloaded"]
    assert (downloaded["status"] == "too_large").all() and downloaded["reason"].str.contains("over the cap").all()


def test_no_boxes_and_broken_inputs(mirror: Mirror, tmp_path: Path) -> None:
    boxes, downloads = write_inputs(mirror, tmp_path)
    empty = crop.crop_all(boxes.iloc[:0], downloads, CropParams(), 2, images_dir=tmp_path / paths.IMAGES_DIR,
                          crops_dir=tmp_path / paths.CROPS_DIR)
    assert list(empty.columns) == list(manifests.CROPS.columns) and empty.empty
    assert (tmp_path / paths.CROPS_MANIFEST).exists()
    with pytest.raises(UserError, match="lacks column"):
        crop.crop_all(boxes.drop(columns="Rotation"), downloads, CropParams(), crops_dir=tmp_path / "x")
    # one path-like ImageID in a doctored selection costs its own row, never the dataset
    hostile = boxes.copy()
    hostile.loc[hostile.index[0], "ImageID"] = "../../etc/passwd"
    mixed = crop.crop_all(hostile, downloads, CropParams(), crops_dir=tmp_path / "x",
                          images_dir=tmp_path / paths.IMAGES_DIR)
    bad = mixed[mixed["ImageID"] == "../../etc/passwd"]
    assert len(bad) == 1 and bad["status"].iat[0] == "not_downloaded" and "16 hex digits" in bad["reason"].iat[0]
    assert (mixed["status"] == "ok").sum() > 0 and not list((tmp_path / "x").rglob("passwd*"))
    doctored = downloads.assign(path="../../selected.parquet")  # a manifest must not point outside data/images
    outside = crop.crop_all(boxes, doctored, CropParams(), images_dir=tmp_path / paths.IMAGES_DIR,
                            crops_dir=tmp_path / "x")
    assert (outside["status"] == "not_downloaded").all()
    assert outside.loc[outside["download_status"] == "ok", "reason"].str.contains("file is missing").all()


@pytest.mark.parametrize("box,expected", [
    ((0.25, 0.75, 0.5, 1.0), (25, 25, 75, 50)),
    ((0.75, 0.25, 0.5, 1.0), (25, 25, 75, 50)),        # swapped corners
    ((-0.5, 0.5, 0.9, 1.7), (0, 45, 50, 50)),           # outside the picture: clamped
    ((math.nan, 0.5, 0.0, 1.0), (0, 0, 0, 50)),         # no box at all
])
def test_pixel_box(box: tuple[float, float, float, float], expected: tuple[int, int, int, int]) -> None:
    assert crop.pixel_box((100, 50), *box) == expected


def test_pixel_box_padding_is_a_fraction_of_the_box_and_clamped() -> None:
    assert crop.pixel_box((100, 100), 0.4, 0.6, 0.0, 0.2, padding=0.5) == (30, 0, 70, 30)


def test_cli_help_and_missing_inputs(workspace: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        crop_main(["--help"])
    assert done.value.code == 0 and "Rotation" in capsys.readouterr().out
    assert run_cli(crop_main, []) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: data/selected.parquet not found") and "\n" not in error


def test_cli_crops_with_params_yaml(mirror: Mirror, workspace: object, capsys: pytest.CaptureFixture[str]) -> None:
    write_inputs(mirror, Path.cwd())
    Path("params.yaml").write_text("crop:\n  min_side: 16\nruntime:\n  crop_processes: 1\n")
    assert run_cli(crop_main, ["--processes", "2"]) == 0
    manifest = pd.read_parquet(paths.CROPS_MANIFEST)
    assert f"{(manifest['status'] == 'ok').sum()} crops written" in capsys.readouterr().out
