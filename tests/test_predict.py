"""``python -m pipeline.predict``: the saved model's label and probability per image, or one clear line."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from pipeline import predict
from pipeline.core.base.errors import run_cli
from pipeline.core.learn.data import Normalize, decode
from pipeline.core.learn.device import infer
from pipeline.core.learn.models import IMAGENET_MEAN, IMAGENET_STD, ModelInfo, build_model, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see trainkit.single_thread


def test_predicts_what_the_model_predicted_before_it_was_saved(trained, capsys):
    images = sorted((trained.path / "data/splits/test").rglob("*.jpg"))[::5]
    model_file = trained.path / "models/model.pt"
    assert run_cli(predict.main, [*map(str, images), "--model", str(model_file), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(images)
    info = trained.result.info
    cpu = torch.device("cpu")
    batch = torch.stack([decode(p, info.img_size) for p in images])
    probs = infer(trained.result.model, batch, cpu, Normalize(info.mean, info.std, cpu)).softmax(1)
    for line, path, p in zip(lines, images, probs):
        name, label, prob, runner_up, prob2 = line.split("\t")
        assert name == str(path)
        assert label == info.labels[p.argmax()] and float(prob) == round(p.max().item(), 4)
        assert runner_up != label and abs(float(prob) + float(prob2) - 1) < 2e-4
    right = sum(line.split("\t")[1].replace(" ", "_") == path.parent.name for line, path in zip(lines, images))
    assert right >= len(images) - 1


def test_a_missing_or_unreadable_image_is_one_line_and_exit_2(trained, tmp_path, capsys):
    model_file = str(trained.path / "models/model.pt")
    assert run_cli(predict.main, [str(tmp_path / "nope.jpg"), "--model", model_file]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such image file" in err and "nope.jpg" in err
    (tmp_path / "notes.jpg").write_text("not a picture")
    assert run_cli(predict.main, [str(tmp_path / "notes.jpg"), "--model", model_file]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "notes.jpg: cannot read image" in err


def test_a_missing_or_foreign_model_file_is_one_line_and_exit_2(trained, tmp_path, capsys):
    image = str(next((trained.path / "data/splits/test").rglob("*.jpg")))
    assert run_cli(predict.main, [image, "--model", str(tmp_path / "none.pt")]) == 2
    assert "train a model first" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert run_cli(predict.main, [image, "--model", str(tmp_path / "other.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a model.pt written by the train stage" in err


def model_predictions(trained, images) -> list[str]:
    info = trained.result.info
    cpu = torch.device("cpu")
    batch = torch.stack([decode(p, info.img_size) for p in images])
    logits = infer(trained.result.model, batch, cpu, Normalize(info.mean, info.std, cpu))
    return [info.labels[i] for i in logits.argmax(1).tolist()]


def test_a_labelled_folder_is_scored_against_its_subfolders_and_written_to_csv(trained, tmp_path, capsys):
    """A user's own photos sorted into folders named after the labels (either spelling, any case), with a
    few put in the wrong folder, a note, an unreadable file, a nested folder and a hidden one."""
    test = sorted((trained.path / "data/splits/test").rglob("*.jpg"))
    burgers = [p for p in test if p.parent.name == "Hamburger"]
    subs = [p for p in test if p.parent.name == "Submarine_sandwich"]
    photos = tmp_path / "my photos"
    placed = {}  # copy -> the label its folder names
    for i, src in enumerate(burgers[:5] + subs[:2]):  # two subs filed under hamburger: two sure mistakes
        dst = photos / "hamburger" / ("nested" if i == 0 else "") / f"h{i}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        placed[dst] = "Hamburger"
    for i, src in enumerate(subs[2:6]):
        dst = photos / "Submarine sandwich" / f"s{i}.JPG"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
        placed[dst] = "Submarine sandwich"
    (photos / "notes.txt").write_text("bought at the market")
    (photos / "hamburger" / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / ".thumbnails").mkdir()
    (photos / ".thumbnails" / "t.jpg").write_bytes(burgers[0].read_bytes())
    loose = photos / "loose.jpg"
    loose.write_bytes(burgers[0].read_bytes())  # in the folder itself: predicted, not scored
    model_file = trained.path / "models/model.pt"
    out_csv = tmp_path / "scores.csv"
    assert run_cli(predict.main, [str(photos), "--model", str(model_file), "--csv", str(out_csv)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    shown = [line.split("\t")[0] for line in lines]
    assert sorted(shown) == sorted(map(str, [*placed, loose]))
    truth = dict(zip(placed, model_predictions(trained, list(placed))))
    right = sum(truth[p] == label for p, label in placed.items())
    assert right <= len(placed) - 2  # the misfiled subs count against it (the model gets them right)
    assert f"accuracy {right / len(placed):.4f} ({right}/{len(placed)})" in captured.err
    assert "skipped 1 file(s) that are not images and 1 unreadable image(s)" in captured.err
    with out_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [tuple(r) for r in rows[:1]] == [predict.CSV_COLUMNS]
    by_path = {r["path"]: r for r in rows}
    for path, label in placed.items():
        row = by_path[str(path)]
        assert row["actual"] == label and row["predicted"] == truth[path]
        assert row["correct"] == str(label == truth[path]).lower()
    assert by_path[str(loose)]["actual"] == "" and by_path[str(loose)]["correct"] == ""


def test_names_with_tabs_newlines_and_quotes_stay_one_parseable_line(trained, tmp_path, capsys, monkeypatch):
    source = next((trained.path / "data/splits/test").rglob("*.jpg")).read_bytes()
    names = ["tab\there.jpg", "new\nline.jpg", 'say "cheese".jpg', "carriage\rreturn.jpg", "plain.jpg"]
    for name in names:
        (tmp_path / name).write_bytes(source)
    monkeypatch.chdir(tmp_path)
    model_file = str(trained.path / "models/model.pt")
    assert run_cli(predict.main, [*names, "--model", model_file, "--top", "2"]) == 0
    out = capsys.readouterr().out
    rows = list(csv.reader(io.StringIO(out, newline=""), delimiter="\t"))
    assert [r[0] for r in rows] == names
    assert all(len(r) == 5 for r in rows)
    assert out.count("\n") == len(names) + 1  # the name with a newline is inside quotes
    assert out.splitlines()[-1] == "plain.jpg\t" + "\t".join(rows[-1][1:])  # plain names are not quoted


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[dict, Path]:
    """A whole model file's contents (an untrained 2-label mobilenet_v2 at 32 px) and a photo to score."""
    root = tmp_path_factory.mktemp("tiny-model")
    info = ModelInfo("mobilenet_v2", ["Hamburger", "Submarine sandwich"], ["Hamburger", "Submarine_sandwich"], 32,
                     list(IMAGENET_MEAN), list(IMAGENET_STD))
    save_checkpoint(root / "model.pt", build_model("mobilenet_v2", 2), info)
    photo = root / "photo.jpg"
    Image.new("RGB", (40, 30), (200, 120, 40)).save(photo)
    assert run_cli(predict.main, [str(photo), "--model", str(root / "model.pt"), "--device", "cpu"]) == 0  # it works
    return torch.load(root / "model.pt", weights_only=True), photo


def nan_weight(data: dict) -> dict:
    state = dict(data["state_dict"])
    state["classifier.1.bias"] = torch.full_like(state["classifier.1.bias"], float("nan"))
    return {**data, "state_dict": state}


@pytest.mark.parametrize("damage, message", [
    (lambda d: None, "not a model file (EOFError)"),  # an empty file
    (lambda d: {**d, "labels": ["a", "b", "c"], "dirnames": ["a", "b", "c"]},
     "its weights do not fit a mobilenet_v2 with 3 labels (size mismatch for classifier.1.weight"),
    (lambda d: {**d, "labels": ["Hamburger"], "dirnames": ["Hamburger"]}, "labels must be two or more different names"),
    (lambda d: {**d, "dirnames": ["Hamburger"]}, "dirnames must be 2 names, one per label"),
    (lambda d: {**d, "arch": "vgg16"}, "arch 'vgg16' is not one of"),
    (lambda d: {**d, "img_size": 10**9}, "img_size must be a whole number of pixels in 16..1024, got 1000000000"),
    (lambda d: {**d, "img_size": -32}, "img_size must be a whole number of pixels in 16..1024, got -32"),
    (lambda d: {**d, "mean": [0.5]}, "mean must be 3 finite numbers (R, G, B), got [0.5]"),
    (lambda d: {**d, "std": [0.2, float("nan"), 0.2]}, "std must be 3 finite numbers"),
    (lambda d: {**d, "std": [0, 0, 0]}, "std must be above 0 for every channel"),  # was: probability nan, exit 0
    (nan_weight, "weight 'classifier.1.bias' holds NaN or infinity"),
])
def test_a_damaged_model_file_is_one_line_and_exit_2(tiny_model, tmp_path, capsys, damage, message):
    good, photo = tiny_model
    capsys.readouterr()
    damaged = tmp_path / "damaged.pt"
    spoilt = damage(good)
    if spoilt is None:
        damaged.write_bytes(b"")
    else:
        torch.save(spoilt, damaged)
    assert run_cli(predict.main, [str(photo), "--model", str(damaged), "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and f"{damaged}: " in err and message in err, err


def test_a_folder_as_the_csv_is_refused_before_any_image_is_scored(tiny_model, tmp_path, capsys):
    good, photo = tiny_model
    model_file = tmp_path / "model.pt"
    torch.save(good, model_file)
    folder = tmp_path / "out"
    folder.mkdir()
    capsys.readouterr()
    assert run_cli(predict.main, [str(photo), "--model", str(model_file), "--csv", str(folder)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: --csv {folder}: is a folder; give the name of the CSV file to write\n"
