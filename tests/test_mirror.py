"""The local Open Images mirror, over real HTTP: layouts, real formats, byte ranges, faults, determinism."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
import requests
from PIL import Image, UnidentifiedImageError

from pipeline.core.base.errors import UserError
from pipeline.core.base.params import CleanParams, load_params
from pipeline.core.net.sources import LAYOUTS
from pipeline.mirror import Mirror
from pipeline.mirror.dataset import FAULTS
from pipeline.mirror.drawing import MARKER_RGB

SAMPLES = Path(__file__).parent / "fixtures" / "openimages-samples"
BOX_COLUMNS = ["ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
               "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside"]
XCLICK_COLUMNS = ["XClick1X", "XClick2X", "XClick3X", "XClick4X", "XClick1Y", "XClick2Y", "XClick3Y", "XClick4Y"]
IMAGE_COLUMNS = ["ImageID", "Subset", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author",
                 "Title", "OriginalSize", "OriginalMD5", "Thumbnail300KURL", "Rotation"]


def fetch(mirror: Mirror, path: str, **kwargs) -> requests.Response:
    response = requests.get(f"{mirror.base_url}/{path}", timeout=10, **kwargs)
    response.raise_for_status()
    return response


def read_csv(mirror: Mirror, path: str, **kwargs) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(fetch(mirror, path).content), **kwargs)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def image_table(mirror: Mirror) -> pd.DataFrame:
    return pd.concat([read_csv(mirror, LAYOUTS["v6"].images[s], dtype={"OriginalSize": "Int64"})
                      for s in ("train", "validation", "test")])


def one(mirror: Mirror, fault: str) -> pd.Series:
    rows = mirror.truth[mirror.truth.fault == fault]
    assert len(rows) >= 1, fault
    return rows.iloc[0]


def boxes_of(mirror: Mirror, image_id: str) -> pd.DataFrame:
    boxes = read_csv(mirror, LAYOUTS["v6"].boxes["train"])
    return boxes[boxes.ImageID == image_id]


# ---------------------------------------------------------------------------------------------------------- layout


@pytest.mark.parametrize("version", sorted(LAYOUTS))
def test_every_version_path_is_served_with_its_columns(mirror, version):
    layout = LAYOUTS[version]
    for _subset, path in layout.boxes.items():
        expected = BOX_COLUMNS + XCLICK_COLUMNS if path.startswith("v6/") else BOX_COLUMNS
        boxes = read_csv(mirror, path)
        assert list(boxes.columns) == expected, path
        assert len(boxes) > 0 and set(boxes.IsGroupOf) <= {-1, 0, 1}
    for path in layout.images.values():
        assert list(read_csv(mirror, path).columns) == IMAGE_COLUMNS, path
    classes = fetch(mirror, layout.classes).text.splitlines()
    if version == "v7":
        assert classes[0] == "LabelName,DisplayName"
        classes = classes[1:]
    assert classes[0] == "/m/011k07,Tortoise" and "/m/0cdn1,Hamburger" in classes
    hierarchy = fetch(mirror, layout.hierarchy).json()
    assert hierarchy["LabelName"] == "/m/0bl9f"
    assert fetch(mirror, layout.hierarchy).content == (SAMPLES / "bbox_labels_600_hierarchy.json").read_bytes()


def test_real_sample_rows_travel_verbatim_in_the_served_files(mirror):
    served = {
        "2018_04/train/train-annotations-bbox.csv": ["train-annotations-bbox.2018_04.sample.csv", "misc-real-bbox-rows.csv",
                                                     "v4-doc-example-annotations-bbox.freeform.sample.csv"],
        "v6/oidv6-train-annotations-bbox.csv": ["oidv6-train-annotations-bbox.sample.csv"],
        "v5/validation-annotations-bbox.csv": ["v5-doc-example-validation-annotations-bbox.sample.csv"],
        "2018_04/train/train-images-boxable-with-rotation.csv": ["train-images-boxable-with-rotation.sample.csv"],
        "2018_04/validation/validation-images-with-rotation.csv": ["validation-images-with-rotation.sample.csv"],
    }
    for path, samples in served.items():
        lines = set(fetch(mirror, path).text.splitlines())
        for sample in samples:
            header, *rows = (SAMPLES / sample).read_text().splitlines()
            assert header == fetch(mirror, path).text.splitlines()[0], (path, sample)
            assert rows and set(rows) <= lines, (path, sample)


def test_served_rows_are_sorted_by_image_id(mirror):
    ids = read_csv(mirror, "2018_04/train/train-annotations-bbox.csv").ImageID.tolist()
    assert ids == sorted(ids)


# ---------------------------------------------------------------------------------------------- real formats


def test_real_class_list_has_no_header_and_parses_with_pandas():
    classes = pd.read_csv(SAMPLES / "class-descriptions-boxable.v5.first50rows.csv", header=None,
                          names=["LabelName", "DisplayName"])
    assert len(classes) == 50 and classes.LabelName.str.startswith("/m/").all()
    food = pd.read_csv(SAMPLES / "class-descriptions-boxable.v5.food-rows.csv", header=None, names=["LabelName", "DisplayName"])
    assert dict(zip(food.DisplayName, food.LabelName))["Hamburger"] == "/m/0cdn1"
    # read naively, the first class would be swallowed as a header
    assert "Tortoise" in pd.read_csv(SAMPLES / "class-descriptions-boxable.v5.first50rows.csv").columns


def test_real_image_tables_base64_md5_empty_rotation_and_quoting():
    train = pd.read_csv(SAMPLES / "train-images-boxable-with-rotation.sample.csv")
    validation = pd.read_csv(SAMPLES / "validation-images-with-rotation.sample.csv")
    assert list(train.columns) == IMAGE_COLUMNS
    for md5 in pd.concat([train, validation]).OriginalMD5:
        assert len(base64.b64decode(md5, validate=True)) == 16
    assert train.Rotation.tolist() == [0.0, 0.0]
    assert validation.Rotation.isna().all()  # the photo had left Flickr: Rotation unknown
    assert train.OriginalSize.dtype.kind == "i"


def test_real_box_files_v4_13_and_v6_21_columns():
    v4 = pd.read_csv(SAMPLES / "train-annotations-bbox.2018_04.sample.csv")
    v6 = pd.read_csv(SAMPLES / "oidv6-train-annotations-bbox.sample.csv")
    v5 = pd.read_csv(SAMPLES / "v5-doc-example-validation-annotations-bbox.sample.csv")
    assert list(v4.columns) == BOX_COLUMNS and list(v5.columns) == BOX_COLUMNS
    assert list(v6.columns) == BOX_COLUMNS + XCLICK_COLUMNS
    pd.testing.assert_frame_equal(v6[BOX_COLUMNS], v4[BOX_COLUMNS].head(3))
    assert (v5.XMin < v5.XMax).all() and v5.IsDepiction.max() == 1


def test_v3_doc_example_is_the_11_column_table_and_its_quoting_is_broken():
    """The V3 README's example has no Rotation column, and a missing comma after the quoted title."""
    text = (SAMPLES / "v3-images.csv.doc-example.txt").read_text()
    table = pd.read_csv(io.StringIO(text))
    assert list(table.columns) == IMAGE_COLUMNS[:-1]
    assert table.Author[0] == "David"  # quoted fields are unquoted
    assert not str(table.OriginalSize[0]).isdigit()  # the title swallowed the size: a parser must check types


def test_served_image_tables_quote_titles_and_format_rotation(mirror):
    table = image_table(mirror)
    assert table.Title.str.contains(",").any() and table.Title.str.contains('"').any()
    raw = "".join(fetch(mirror, path).text for path in LAYOUTS["v6"].images.values())
    for title in table.Title[table.Title.str.contains('[",]', regex=True)]:
        assert '"' + title.replace('"', '""') + '"' in raw  # CSV-quoted, inner quotes doubled
    rotations = {line.rsplit(",", 1)[1] for line in raw.splitlines() if not line.startswith("ImageID,")}
    assert {"0.0", "90.0", "270.0", ""} <= rotations
    for md5 in table.OriginalMD5:
        assert len(base64.b64decode(md5, validate=True)) == 16


def test_v5_coordinates_use_float32_digits_and_2018_04_six_decimals(mirror):
    v5 = fetch(mirror, "v5/validation-annotations-bbox.csv").text.splitlines()[1:]
    v4 = fetch(mirror, "2018_04/validation/validation-annotations-bbox.csv").text.splitlines()[1:]
    assert all(len(line.split(",")[4].split(".")[1]) == 6 for line in v4)
    assert any(len(line.split(",")[4].split(".")[-1]) > 6 for line in v5)


# ------------------------------------------------------------------------------------------------ the dataset


def test_truth_lists_every_fault_with_its_expected_status(mirror):
    truth = mirror.truth
    assert set(truth.fault) - {""} == set(FAULTS)
    for fault, spec in FAULTS.items():
        assert (truth[truth.fault == fault].expected_status == spec.expected_status).all()
    assert truth.ImageID.is_unique and truth.ImageID.str.fullmatch(r"[0-9a-f]{16}").all()
    assert set(truth.Subset) == {"train", "validation", "test"}
    assert truth.labels.apply(lambda labels: {"Hamburger", "Sandwich"} <= set(labels)).any()
    assert truth.labels.apply(len).between(1, 3).all()
    assert "upright" in truth.attrs


def test_tables_agree_with_truth_and_with_served_bytes(mirror):
    table = image_table(mirror).set_index("ImageID")
    truth = mirror.truth.set_index("ImageID")
    assert set(truth.index) <= set(table.index)
    assert (table.loc[truth.index, "OriginalURL"] == truth.OriginalURL).all()
    for image_id, row in truth[truth.fault == ""].iterrows():
        body = requests.get(row.OriginalURL, timeout=10).content
        assert table.loc[image_id, "OriginalMD5"] == md5_b64(body)
        assert table.loc[image_id, "OriginalSize"] == len(body)
    boxes = read_csv(mirror, LAYOUTS["v6"].boxes["train"])
    mids = {"Hamburger": "/m/0cdn1", "Sandwich": "/m/0l515", "Submarine sandwich": "/m/06pcq",
            "Hot dog": "/m/01b9xk", "Pizza": "/m/0663v"}
    for image_id, row in truth[truth.Subset == "train"].iterrows():
        assert sorted(boxes[boxes.ImageID == image_id].LabelName) == sorted(mids[label] for label in row.labels)


def test_box_flags_take_1_0_and_minus_1(mirror):
    boxes = read_csv(mirror, LAYOUTS["v6"].boxes["train"])
    ours = boxes[boxes.ImageID.isin(mirror.truth.ImageID)]
    for flag in ("IsGroupOf", "IsDepiction", "IsOccluded"):
        assert set(ours[flag]) == {-1, 0, 1}, flag
    assert set(ours.Source) == {"xclick", "activemil"}
    clicked = ours[ours.Source == "xclick"]
    assert ((clicked.XClick2X == clicked.XMin) & (clicked.XClick1Y == clicked.YMin)).all()
    assert (ours[ours.Source != "xclick"].XClick1X == -1).all()


def test_cvdf_copies_exist_for_every_image(mirror):
    for row in mirror.truth.itertuples():
        response = requests.get(row.cvdf_url, timeout=10)
        assert response.status_code == 200 and response.headers["Content-Type"] == "image/jpeg"
        Image.open(io.BytesIO(response.content)).load()


def test_cvdf_copies_are_at_most_1024_on_the_long_side(tmp_path):
    with Mirror(tmp_path, labels=["Pizza"], images_per_label=1, size=(1300, 900), faults=False) as m:
        row = m.truth.iloc[0]
        original = Image.open(io.BytesIO(requests.get(row.OriginalURL, timeout=10).content))
        copy = Image.open(io.BytesIO(requests.get(row.cvdf_url, timeout=10).content))
    assert original.size == (1300, 900) and copy.size == (1024, 709)


def _marker_corners(image: Image.Image) -> list[bool]:
    """Which corners (top-left, top-right, bottom-left, bottom-right) hold the blue orientation marker."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.int16)
    h, w, _ = pixels.shape
    k = max(2, min(h, w) // 12)
    patches = [pixels[1:k, 1:k], pixels[1:k, w - k:w - 1], pixels[h - k:h - 1, 1:k], pixels[h - k:h - 1, w - k:w - 1]]
    return [bool(np.abs(p.reshape(-1, 3).mean(0) - MARKER_RGB).max() < 40) for p in patches]


def _upright_crop(mirror: Mirror, row: pd.Series) -> tuple[Image.Image, Image.Image]:
    """(stored image, crop of its first box turned CCW by Rotation): what crop must do with Rotation."""
    image = Image.open(io.BytesIO(requests.get(row.OriginalURL, timeout=10).content))
    box = boxes_of(mirror, row.ImageID).iloc[0]
    w, h = image.size
    crop = image.crop((round(box.XMin * w), round(box.YMin * h), round(box.XMax * w), round(box.YMax * h)))
    table = image_table(mirror).set_index("ImageID")
    return image, crop.rotate(table.loc[row.ImageID, "Rotation"], expand=True)


def test_boxes_are_tight_around_upright_objects(mirror):
    for row in mirror.truth[(mirror.truth.fault == "") & (mirror.truth.Subset == "train")].head(6).itertuples():
        _, crop = _upright_crop(mirror, pd.Series(row._asdict()))
        assert _marker_corners(crop) == [True, False, False, False]


@pytest.mark.parametrize("fault, rotation, orientation", [("exif_rotated", 270.0, 6), ("rotation90", 90.0, None)])
def test_rotated_originals_come_out_upright_after_turning_by_rotation(mirror, fault, rotation, orientation):
    row = one(mirror, fault)
    assert row.Rotation == rotation
    image, crop = _upright_crop(mirror, row)
    assert image.getexif().get(0x0112) == orientation
    assert image.width < image.height  # stored sideways (the picture is landscape)
    assert _marker_corners(crop) == [True, False, False, False]
    if orientation:  # EXIF says the same as Rotation
        from PIL import ImageOps

        assert ImageOps.exif_transpose(image).size == (image.height, image.width)


# ---------------------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("fault, status", [("not_found", 404), ("gone", 410), ("forbidden", 403)])
def test_refusals(mirror, fault, status):
    assert requests.get(one(mirror, fault).OriginalURL, timeout=10).status_code == status


@pytest.mark.parametrize("fault, first", [("rate_limited", 429), ("server_error", 500)])
def test_transient_errors_twice_then_ok(mirror, fault, first):
    mirror.reset_faults()
    mirror.clear_requests()
    row = one(mirror, fault)
    answers = [requests.get(row.OriginalURL, timeout=10) for _ in range(3)]
    assert [a.status_code for a in answers] == [first, first, 200]
    if fault == "rate_limited":
        assert answers[0].headers["Retry-After"] == "1"
    assert md5_b64(answers[2].content) == image_table(mirror).set_index("ImageID").loc[row.ImageID, "OriginalMD5"]
    log = [r for r in mirror.requests if r.path in row.OriginalURL]
    assert [r.status for r in log] == [first, first, 200]
    assert log[0].t <= log[1].t <= log[2].t and log[2].nbytes == len(answers[2].content)


def test_slow_body_times_out_a_1s_read_timeout_then_is_fast(mirror):
    mirror.reset_faults()
    url = one(mirror, "slow").OriginalURL
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ConnectionError):  # requests' ReadTimeout while streaming the body
        _ = requests.get(url, timeout=(5, 1)).content
    assert time.monotonic() - started >= 0.9  # it did wait for the stall (a lower bound cannot flake)
    assert requests.get(url, timeout=(5, 1)).status_code == 200  # the stall hits the first response only


def test_truncated_body_breaks_once(mirror):
    mirror.reset_faults()
    url = one(mirror, "truncated").OriginalURL
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(url, timeout=10)
    response = requests.get(url, timeout=10)
    assert int(response.headers["Content-Length"]) == len(response.content)
    Image.open(io.BytesIO(response.content)).load()


def test_placeholder_redirects_to_a_grey_500x374_png(mirror):
    response = requests.get(one(mirror, "placeholder").OriginalURL, allow_redirects=False, timeout=10)
    assert response.status_code == 302 and response.headers["Location"] == mirror.placeholder_url
    final = requests.get(one(mirror, "placeholder").OriginalURL, timeout=10)
    assert final.url == mirror.placeholder_url and final.headers["Content-Type"] == "image/png"
    image = Image.open(io.BytesIO(final.content))
    assert image.format == "PNG" and image.size == (500, 374)
    rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    assert np.abs(rgb - rgb.mean(axis=2, keepdims=True)).max() == 0  # grey only
    assert rgb.mean() > 200


def test_changed_original_is_valid_but_not_what_the_table_says(mirror):
    row = one(mirror, "changed")
    body = requests.get(row.OriginalURL, timeout=10).content
    Image.open(io.BytesIO(body)).load()
    listed = image_table(mirror).set_index("ImageID").loc[row.ImageID]
    assert md5_b64(body) != listed.OriginalMD5 and len(body) != listed.OriginalSize


def test_corrupt_original_matches_the_table_but_does_not_decode(mirror):
    row = one(mirror, "corrupt")
    body = requests.get(row.OriginalURL, timeout=10).content
    listed = image_table(mirror).set_index("ImageID").loc[row.ImageID]
    assert md5_b64(body) == listed.OriginalMD5 and len(body) == listed.OriginalSize
    image = Image.open(io.BytesIO(body))  # the header is fine ...
    assert image.format == "JPEG"
    with pytest.raises(OSError):
        image.load()  # ... the pixels are not


@pytest.mark.parametrize("fault, fmt, mode", [("cmyk", "JPEG", "CMYK"), ("greyscale", "JPEG", "L"), ("png", "PNG", "RGBA")])
def test_unusual_but_valid_images(mirror, fault, fmt, mode):
    row = one(mirror, fault)
    response = requests.get(row.OriginalURL, timeout=10)
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert (image.format, image.mode) == (fmt, mode)
    assert response.headers["Content-Type"] == f"image/{fmt.lower()}"
    assert row.OriginalURL.endswith(".png" if fmt == "PNG" else ".jpg")


def test_not_image_and_bad_url(mirror):
    response = requests.get(one(mirror, "not_image").OriginalURL, timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/html")
    with pytest.raises(UnidentifiedImageError):
        Image.open(io.BytesIO(response.content))
    assert one(mirror, "bad_url").OriginalURL.startswith("ftp://")


def test_duplicates_are_byte_identical_and_near_duplicates_look_alike(mirror):
    def pair(fault: str) -> tuple[bytes, bytes]:
        rows = mirror.truth[mirror.truth.fault == fault]
        assert len(rows) == 2 and rows.iloc[1].duplicate_of == rows.iloc[0].ImageID
        return tuple(requests.get(u, timeout=10).content for u in rows.OriginalURL)  # type: ignore[return-value]

    first, second = pair("duplicate")
    assert first == second
    copies = mirror.truth[mirror.truth.duplicate_of != ""]
    assert (copies.ImageID > copies.duplicate_of).all()  # "keep the smallest ImageID" keeps the first
    assert set(copies.expected_reject) == {"duplicate", "near_duplicate"}
    first, second = pair("near_duplicate")
    assert first != second
    a, b = (np.asarray(Image.open(io.BytesIO(x)).convert("L").resize((32, 24)), dtype=np.float32) for x in (first, second))
    assert Image.open(io.BytesIO(first)).size != Image.open(io.BytesIO(second)).size
    assert np.abs(a - b).mean() < 4


# ------------------------------------------------------------------------------------- HTTP semantics + switches


def test_head_range_if_range_and_conditional_get(mirror):
    url = f"{mirror.base_url}/{LAYOUTS['v6'].boxes['train']}"
    full = requests.get(url, timeout=10)
    size, etag = len(full.content), full.headers["ETag"]
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == size and head.content == b""
    assert head.headers["Last-Modified"] and head.headers["Accept-Ranges"] == "bytes"
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=10)
    assert part.status_code == 206 and part.content == full.content[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{size}"
    assert requests.get(url, headers={"Range": "bytes=1000-"}, timeout=10).content == full.content[1000:]
    assert requests.get(url, headers={"Range": "bytes=-10"}, timeout=10).content == full.content[-10:]
    assert requests.get(url, headers={"Range": f"bytes={size}-"}, timeout=10).status_code == 416
    same = requests.get(url, headers={"Range": "bytes=10-", "If-Range": etag}, timeout=10)
    assert same.status_code == 206
    other = requests.get(url, headers={"Range": "bytes=10-", "If-Range": '"something-else"'}, timeout=10)
    assert other.status_code == 200 and other.content == full.content
    assert requests.get(url, headers={"If-None-Match": etag}, timeout=10).status_code == 304


def test_metadata_truncate_once_then_resume_with_range(mirror):
    url = f"{mirror.base_url}/{LAYOUTS['v5'].images['validation']}"
    expected = requests.get(url, timeout=10).content
    mirror.configure(metadata_truncate_once=True)
    try:
        received = b""
        with requests.get(url, stream=True, timeout=10) as response:
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                for chunk in response.iter_content(256):
                    received += chunk
        assert 0 < len(received) < len(expected)
        rest = requests.get(url, headers={"Range": f"bytes={len(received)}-"}, timeout=10)
        assert rest.status_code == 206 and received + rest.content == expected
        assert requests.get(url, timeout=10).content == expected
    finally:
        mirror.configure(metadata_truncate_once=False)


def test_latency_switch_and_request_log(mirror):
    url = f"{mirror.base_url}/{LAYOUTS['v6'].classes}"
    mirror.configure(latency=0.3)
    try:
        started = time.monotonic()
        requests.get(url, timeout=10)
        assert time.monotonic() - started >= 0.3
    finally:
        mirror.configure(latency=0)
    mirror.clear_requests()
    requests.head(url, timeout=10)
    requests.get(url, timeout=10)
    log = mirror.requests
    assert [(r.method, r.status) for r in log] == [("HEAD", 200), ("GET", 200)]
    assert log[0].nbytes == 0 and log[1].nbytes == len(requests.get(url, timeout=10).content)
    assert log[0].t <= log[1].t <= time.monotonic()


# --------------------------------------------------------------------------------------- determinism, CLI, fixtures


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".parquet"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    def served(root: Path, seed: int) -> tuple[dict[str, bytes], bytes]:
        with Mirror(root, images_per_label=2, seed=seed) as m:
            table = requests.get(f"{m.base_url}/{LAYOUTS['v6'].images['train']}", timeout=10).content
            return _files(root), table.replace(urlsplit(m.url).netloc.encode(), b"HOST:PORT")

    first, again, other = served(tmp_path / "a", 0), served(tmp_path / "b", 0), served(tmp_path / "c", 1)
    assert first == again
    assert first[0].keys() != other[0].keys() and first[1] != other[1]


def test_a_second_start_reuses_the_drawn_files(tmp_path):
    with Mirror(tmp_path, images_per_label=2):
        pass
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.jpg")}
    with Mirror(tmp_path, images_per_label=2) as m:
        assert len(m.truth) > 0
    assert stamps and stamps == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.jpg")}


def test_classes_are_told_apart_by_a_nearest_centroid_on_colour_histograms(mirror):
    """A floor for learnability: if colour alone separates the classes' crops, a CNN will too."""
    names, features = [], []
    boxes = pd.concat([read_csv(mirror, path) for path in LAYOUTS["v6"].boxes.values()])
    for row in mirror.truth[mirror.truth.fault == ""].itertuples():
        image = Image.open(io.BytesIO(requests.get(row.cvdf_url, timeout=10).content)).convert("RGB")
        for box in boxes[boxes.ImageID == row.ImageID].itertuples():
            w, h = image.size
            crop = np.asarray(image.crop((box.XMin * w, box.YMin * h, box.XMax * w, box.YMax * h)).resize((32, 32)))
            hist = np.histogramdd(crop.reshape(-1, 3) // 64, bins=(4, 4, 4), range=[(0, 4)] * 3)[0].ravel()
            names.append(box.LabelName)
            features.append(hist / hist.sum())
    names, features = np.array(names), np.array(features)
    assert len(set(names)) == 5
    right = 0
    for i in range(len(names)):  # leave one out
        others = np.arange(len(names)) != i
        centroids = {n: features[others & (names == n)].mean(0) for n in set(names)}
        right += min(centroids, key=lambda n: np.abs(centroids[n] - features[i]).sum()) == names[i]
    assert right / len(names) > 0.9, right / len(names)


def test_a_port_in_use_is_a_user_error(mirror, tmp_path):
    with pytest.raises(UserError, match="cannot listen"):
        Mirror(tmp_path, images_per_label=1, port=int(mirror.url.rsplit(":", 1)[1])).start()


def test_unknown_label_is_a_user_error_with_a_suggestion(tmp_path):
    with pytest.raises(UserError, match="did you mean 'Hamburger'"):
        Mirror(tmp_path, labels=["hamburgr"])


def test_cli_serves_until_terminated(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "pipeline.mirror", "--root", str(tmp_path), "--images-per-label", "1",
                                "--no-faults", "--labels", "Pizza"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        info = None
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith("{"):
                info = json.loads(line)
                break
        assert info is not None and info["labels"] == ["Pizza"]
        classes = requests.get(f"{info['base_url']}/{LAYOUTS['v7'].classes}", timeout=10)
        assert classes.text.startswith("LabelName,DisplayName\n")
        assert json.loads((tmp_path / "mirror.json").read_text())["url"] == info["url"]
        assert len(pd.read_parquet(info["truth"])) == info["images"]
    finally:
        process.terminate()
    assert process.wait(timeout=10) == 0


def test_workspace_params_point_the_pipeline_at_the_mirror(workspace, mirror):
    workspace.write_params({**mirror.params_overrides(), "source": {"version": "v7"}, "download.rate": 0})
    assert Path.cwd() == workspace.path
    params = load_params()
    assert params.source.base_url == mirror.base_url and params.source.cvdf_url == mirror.cvdf_url
    assert params.source.version == "v7" and params.download.rate == 0 and params.labels == ["Hamburger", "Sandwich"]


# ------------------------------------------------------------------------------- pooled pictures (big mirrors)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    """Pictures composed from 3 pre-drawn backgrounds and 3 drawings per class: what benchmarks of 100k use."""
    with Mirror(root=tmp_path_factory.mktemp("pooled"), labels=("Hamburger", "Sandwich"), images_per_label=30,
                size=(320, 240), faults=True, seed=0, pool=3) as m:
        yield m


def test_pooled_pictures_keep_boxes_tight_and_upright(pooled):
    for row in pooled.truth[(pooled.truth.fault == "") & (pooled.truth.Subset == "train")].head(6).itertuples():
        _, crop = _upright_crop(pooled, pd.Series(row._asdict()))
        assert _marker_corners(crop) == [True, False, False, False]
    _, crop = _upright_crop(pooled, one(pooled, "rotation90"))
    assert _marker_corners(crop) == [True, False, False, False]


def test_pooled_pictures_are_no_near_copies_of_each_other(pooled):
    """Only a few drawings, yet no two photos (the planted copies aside) are near copies for the clean stage."""
    from pipeline.core.images.imaging import image_phash
    from pipeline.stages.clean.stage import hash_bits, near_pairs

    rows = pooled.truth[pooled.truth.fault == ""]
    hashes = [image_phash(Image.open(io.BytesIO(requests.get(url, timeout=10).content)).convert("RGB"))
              for url in rows.OriginalURL]
    assert len(hashes) > 60
    assert near_pairs(hash_bits(hashes), CleanParams().near_duplicate_distance).size == 0

