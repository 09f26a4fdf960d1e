"""Label names -> MIDs (any case, did-you-mean) and the hierarchy's subclasses and overlap rule."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.base.errors import UserError
from pipeline.core.net.labels import ClassList, Hierarchy, assign
from pipeline.stages.metadata.convert import read_classes

SAMPLES = Path(__file__).parent / "fixtures" / "openimages-samples"
HAMBURGER, SANDWICH, SUBMARINE, HOT_DOG = "/m/0cdn1", "/m/0l515", "/m/06pcq", "/m/01b9xk"


@pytest.fixture(scope="module")
def classes() -> ClassList:
    pairs = []
    for name in ("class-descriptions-boxable.v5.first50rows.csv", "class-descriptions-boxable.v5.food-rows.csv"):
        table = read_classes(SAMPLES / name)
        pairs += zip(table.column("LabelName").to_pylist(), table.column("DisplayName").to_pylist())
    return ClassList.from_pairs(pairs, "the test class list")


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy.from_tree(json.loads((SAMPLES / "bbox_labels_600_hierarchy.json").read_text()))


@pytest.mark.parametrize("text", ["Hamburger", "hamburger", "HAMBURGER", "  hamburger ", "/m/0cdn1"])
def test_names_resolve_in_any_case_and_mids_too(classes: ClassList, text: str) -> None:
    assert classes.resolve(text) == HAMBURGER


def test_spaces_inside_a_name_are_collapsed(classes: ClassList) -> None:
    assert classes.resolve("submarine   Sandwich") == SUBMARINE


def test_unknown_label_names_the_closest_real_one(classes: ClassList) -> None:
    with pytest.raises(UserError) as info:
        classes.resolve("Hamburgr")
    assert str(info.value) == "unknown label 'Hamburgr' — did you mean 'Hamburger'?"


def test_unknown_label_with_nothing_close_says_where_the_names_are(classes: ClassList) -> None:
    with pytest.raises(UserError, match=r"unknown label 'Qqqqzz' \(not one of the \d+ classes in the test class list\)"):
        classes.resolve("Qqqqzz")


def test_unknown_mid_suggests_a_mid_with_its_name(classes: ClassList) -> None:
    with pytest.raises(UserError, match=r"did you mean '/m/0cdn1' \(Hamburger\)"):
        classes.resolve("/m/0cdn2")


def test_ambiguous_names_ask_for_a_mid() -> None:
    twins = ClassList.from_pairs([("/m/a", "Bat"), ("/m/b", "bat")])
    with pytest.raises(UserError, match="ambiguous: /m/a, /m/b"):
        twins.resolve("BAT")


def test_the_same_label_twice_counts_once(classes: ClassList) -> None:
    assert classes.resolve_all(["Sandwich", "hamburger", "/m/0cdn1", "SANDWICH"]) == [SANDWICH, HAMBURGER]


def test_real_hierarchy_puts_hamburger_and_submarine_sandwich_under_sandwich(hierarchy: Hierarchy) -> None:
    below = hierarchy.descendants(SANDWICH)
    assert below == {SANDWICH: 0, HAMBURGER: 1, SUBMARINE: 1}
    assert hierarchy.descendants(HAMBURGER) == {HAMBURGER: 0}


def test_parts_are_not_subclasses() -> None:
    tree = {"LabelName": "/root", "Subcategory": [
        {"LabelName": "/car", "Part": [{"LabelName": "/wheel"}], "Subcategory": [{"LabelName": "/taxi"}]},
    ]}
    assert Hierarchy.from_tree(tree).descendants("/car") == {"/car": 0, "/taxi": 1}


def test_a_class_listed_under_two_parents_keeps_the_children_of_both_places() -> None:
    tree = {"LabelName": "/root", "Subcategory": [
        {"LabelName": "/a", "Subcategory": [{"LabelName": "/x", "Subcategory": [{"LabelName": "/x1"}]}]},
        {"LabelName": "/b", "Subcategory": [{"LabelName": "/x", "Subcategory": [{"LabelName": "/x2"}]}]},
    ]}
    hierarchy = Hierarchy.from_tree(tree)
    assert hierarchy.descendants("/x") == {"/x": 0, "/x1": 1, "/x2": 1}
    assert hierarchy.descendants("/b") == {"/b": 0, "/x": 1, "/x1": 2, "/x2": 2}


def test_overlap_goes_to_the_most_specific_requested_label(hierarchy: Hierarchy) -> None:
    claims = assign([SANDWICH, HAMBURGER], hierarchy)
    assert claims == {SANDWICH: SANDWICH, HAMBURGER: HAMBURGER, SUBMARINE: SANDWICH}


def test_a_parent_alone_takes_its_subclasses_and_without_subclasses_only_itself(hierarchy: Hierarchy) -> None:
    assert assign([SANDWICH], hierarchy) == {SANDWICH: SANDWICH, HAMBURGER: SANDWICH, SUBMARINE: SANDWICH}
    assert assign([SANDWICH, HAMBURGER], None) == {SANDWICH: SANDWICH, HAMBURGER: HAMBURGER}


def test_overlap_prefers_the_nearest_ancestor_then_the_first_listed() -> None:
    tree = {"LabelName": "/root", "Subcategory": [
        {"LabelName": "/food", "Subcategory": [{"LabelName": "/snack", "Subcategory": [{"LabelName": "/chips"}]}]},
        {"LabelName": "/salty", "Subcategory": [{"LabelName": "/chips"}]},
    ]}
    hierarchy = Hierarchy.from_tree(tree)
    assert assign(["/food", "/snack"], hierarchy)["/chips"] == "/snack"      # 1 step beats 2 steps
    assert assign(["/snack", "/salty"], hierarchy)["/chips"] == "/snack"     # both 1 step: first listed
    assert assign(["/salty", "/snack"], hierarchy)["/chips"] == "/salty"
