"""The evaluate stage: metrics that agree with the per-image confusion rows, and figures people can read."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image
from trainkit import LABELS, TINY_RUNTIME, make_splits

from pipeline.core.base.errors import run_cli
from pipeline.core.base.params import RuntimeParams
from pipeline.core.learn.folders import Classes, read_split
from pipeline.stages.evaluate import stage as evaluate
from pipeline.stages.evaluate.__main__ import main as evaluate_main

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see trainkit.single_thread


@pytest.fixture(scope="module")
def evaluated(trained):
    """The trained workspace after the evaluate stage's ``main`` ran in it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(trained.path)
        assert evaluate_main([]) == 0
    return trained.path


def test_metrics_agree_with_the_confusion_rows(evaluated):
    metrics = json.loads((evaluated / "metrics/eval.json").read_text())
    with (evaluated / "plots/confusion.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics["test_images"] == 16
    assert set(rows[0]) == {"actual", "predicted"}
    right = sum(r["actual"] == r["predicted"] for r in rows)
    assert metrics["top1"] == pytest.approx(right / len(rows))
    assert metrics["top1"] >= 0.8  # the trained model learned the easy split (chance: 0.5)
    assert "top3" not in metrics and "top5" not in metrics  # only two classes: top-3 would always be 1
    for label, stats in metrics["per_class"].items():
        assert stats["support"] == sum(r["actual"] == label for r in rows) == 8
        predicted = sum(r["predicted"] == label for r in rows)
        hits = sum(r["actual"] == r["predicted"] == label for r in rows)
        assert stats["recall"] == pytest.approx(hits / 8)
        assert stats["precision"] == pytest.approx(hits / predicted if predicted else 0.0)
    for name in ("confusion.png", "worst.png", "gradcam.png"):
        with Image.open(evaluated / "reports/evaluate" / name) as png:
            assert png.format == "PNG"
    wrong = {}
    for r in rows:
        if r["actual"] != r["predicted"]:
            wrong[(r["actual"], r["predicted"])] = wrong.get((r["actual"], r["predicted"]), 0) + 1
    assert [(c["actual"], c["predicted"], c["count"]) for c in metrics["most_confused"]] == sorted(
        ((a, p, n) for (a, p), n in wrong.items()), key=lambda t: -t[2])
    page = (evaluated / "reports/evaluate/index.html").read_text()
    for name in ("confusion.png", "worst.png", "gradcam.png"):
        assert f'<img src="{name}"' in page
    assert "Most confused" in page and f"top1 <b>{metrics['top1']:.3f}</b>" in page


def test_most_confused_pairs_from_a_known_confusion() -> None:
    labels = ["cat", "dog", "<fox>"]
    # actual -> predicted: cat->dog 3 times, <fox>->cat twice, cat-><fox> and dog-><fox> once each
    pairs = [(0, 1)] * 3 + [(2, 0)] * 2 + [(0, 2), (1, 2)] + [(0, 0)] * 4 + [(1, 1)] * 5 + [(2, 2)]
    targets = torch.tensor([a for a, _ in pairs])
    probs = torch.nn.functional.one_hot(torch.tensor([p for _, p in pairs]), 3).float()
    m = evaluate.classification_metrics(probs, targets, labels)
    assert m["most_confused"] == [
        {"actual": "cat", "predicted": "dog", "count": 3},
        {"actual": "<fox>", "predicted": "cat", "count": 2},
        {"actual": "cat", "predicted": "<fox>", "count": 1},  # equal counts: in the classes' order
        {"actual": "dog", "predicted": "<fox>", "count": 1},
    ]
    assert evaluate.most_confused(evaluate.confusion_matrix(probs.argmax(1), targets, 3), labels, min_count=2) == \
        m["most_confused"][:2]
    page = evaluate.report_page(m, ["confusion.png"])
    rows = page.split("Most confused")[1]
    assert rows.index("<td>cat</td><td>dog</td><td>3</td>") < rows.index("<td>&lt;fox&gt;</td><td>cat</td><td>2</td>")
    assert "<fox>" not in page  # labels come from the internet: escaped


def test_the_report_shows_grad_cam_maps_of_the_worst_mistakes_then_right_answers(evaluated) -> None:
    result = evaluate.evaluate(RuntimeParams(**TINY_RUNTIME), evaluated / "models/model.pt",
                               evaluated / "data/splits", explain=3)
    wrong = evaluate.worst_mistakes(result, 3)
    right = evaluate.right_sample(result, 3)
    assert [e.index for e in result.explained] == wrong + right and len(right) == 3
    assert all(result.predicted[i] == result.split.targets[i] for i in right)
    assert len({result.split.targets[i] for i in right}) == 2  # spread over the split: both classes
    assert result.explained_layer == "features.18"  # mobilenet_v2's last conv stage
    for e in result.explained:
        assert e.image.shape == (3, 48, 48) and e.heatmap.shape == (48, 48)
        assert 0 <= e.heatmap.min() and e.heatmap.max() <= 1 + 1e-6
    titles = [ax.get_title() for ax in evaluate.gradcam_figure(result).axes if ax.get_title()]
    assert len(titles) == len(wrong) + 3 and all(t.startswith("actual: ") for t in titles)


def test_classification_metrics_by_hand():
    # 6 classes; rows are images; the true class is ranked 1st, 2nd, 4th, 6th, 1st, 3rd
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    ranks_of_truth = [0, 1, 3, 5, 0, 2]
    probs = torch.zeros(6, 6)
    for i, (t, r) in enumerate(zip(targets.tolist(), ranks_of_truth)):
        others = [c for c in range(6) if c != t]
        order = others[:r] + [t] + others[r:]
        probs[i, order] = torch.tensor([0.5, 0.2, 0.12, 0.08, 0.06, 0.04])
    labels = list("abcdef")
    m = evaluate.classification_metrics(probs, targets, labels)
    assert m["top1"] == pytest.approx(2 / 6)
    assert m["top3"] == pytest.approx(4 / 6)
    assert m["top5"] == pytest.approx(5 / 6)
    predicted = probs.argmax(1).tolist()
    for c, label in enumerate(labels):
        tp = sum(p == t == c for p, t in zip(predicted, targets.tolist()))
        n_pred = predicted.count(c)
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / 1
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert m["per_class"][label] == pytest.approx({"precision": precision, "recall": recall, "f1": f1,
                                                       "support": 1})
    assert m["macro_f1"] == pytest.approx(sum(v["f1"] for v in m["per_class"].values()) / 6)


def test_worst_grid_shows_the_most_confident_mistakes_first(tmp_path):
    root = make_splits(tmp_path / "splits", {"test": 3})
    split = read_split(root, "test", Classes(list(LABELS), list(LABELS.values())))
    assert [p.parent.name for p in split.paths] == ["Hamburger"] * 3 + ["Submarine_sandwich"] * 3
    # five mistakes made with confidence 0.6 .. 0.9, one right answer
    probs = torch.tensor([[0.4, 0.6], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2], [0.75, 0.25], [0.35, 0.65]])
    result = evaluate.Evaluation(split, list(LABELS.values()), probs, {})
    figure = evaluate.worst_figure(result, 3)
    titles = [ax.get_title() for ax in figure.axes if ax.get_title()]
    assert titles == ["actual: Hamburger\npredicted: Submarine sandwich (0.90)",
                      "actual: Submarine sandwich\npredicted: Hamburger (0.80)",
                      "actual: Submarine sandwich\npredicted: Hamburger (0.75)"]
    assert len(figure.axes) == 3


def test_a_test_folder_the_model_does_not_know_is_a_one_line_error(trained, tmp_path, monkeypatch, capsys):
    make_splits(tmp_path / "data/splits", {"test": 1})
    (tmp_path / "data/splits/test/Unknown_class").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/model.pt").write_bytes((trained.path / "models/model.pt").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert run_cli(evaluate_main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Unknown_class: class folder missing" in err
