"""``python -m pipeline.predict``: the saved model's label and probability per image, or one clear line."""
from __future__ import annotations

import torch
from trainkit import one_thread, trained  # noqa: F401

from pipeline import predict
from pipeline.core.errors import run_cli
from pipeline.core.learn.data import Normalize, decode
from pipeline.core.learn.device import infer


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
