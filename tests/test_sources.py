"""The official file layout of each Open Images version, checked against the mirror over real HTTP."""
from __future__ import annotations

import pytest
import requests

from pipeline.core.base.errors import UserError
from pipeline.core.net.sources import LAYOUTS, SUBSETS, VERSIONS, join_url, layout
from pipeline.mirror import Mirror


def test_every_version_has_a_layout() -> None:
    assert set(LAYOUTS) == set(VERSIONS) == {"v4", "v5", "v6", "v7"}


def test_versions_reuse_files_the_way_open_images_did() -> None:
    v4, v5, v6, v7 = (layout(v) for v in VERSIONS)
    assert v4.boxes["train"] == v5.boxes["train"] == "2018_04/train/train-annotations-bbox.csv"
    assert v6.boxes["train"] == v7.boxes["train"] == "v6/oidv6-train-annotations-bbox.csv"
    assert v4.boxes["validation"] == "2018_04/validation/validation-annotations-bbox.csv"
    assert v5.boxes["validation"] == v6.boxes["validation"] == v7.boxes["validation"] == "v5/validation-annotations-bbox.csv"
    assert v4.images == v5.images == v6.images == v7.images
    assert v6.classes == "v5/class-descriptions-boxable.csv" and v7.classes == "v7/oidv7-class-descriptions-boxable.csv"
    assert len({lay.hierarchy for lay in (v4, v5, v6, v7)}) == 1


def test_files_lists_the_small_files_first_and_only_the_asked_subsets() -> None:
    v6 = layout("v6")
    assert v6.files(["validation"]) == [v6.classes, v6.hierarchy, v6.images["validation"], v6.boxes["validation"]]
    assert len(v6.files()) == 2 + 2 * len(SUBSETS)


def test_an_unknown_version_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown Open Images version 'v9'"):
        layout("v9")


@pytest.mark.parametrize("base", ["http://h/openimages", "http://h/openimages/"])
def test_join_url_puts_one_slash_between(base: str) -> None:
    assert join_url(base, "/v6/x.csv") == "http://h/openimages/v6/x.csv"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_mirror_serves_every_path_of_every_version(mirror: Mirror, version: str) -> None:
    for path in layout(version).files():
        response = requests.head(join_url(mirror.base_url, path), timeout=10)
        assert response.status_code == 200, path
        assert int(response.headers["Content-Length"]) > 0, path
