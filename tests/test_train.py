"""The train stage on a tiny easy split, on the CPU: it learns, saves safely, repeats, loads weights offline."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from trainkit import NO_WEIGHTS, TINY_RUNTIME, TINY_TRAIN, make_splits, refuse_download, write_params

from pipeline import lr_find
from pipeline.core.base.errors import UserError, run_cli
from pipeline.core.base.params import RuntimeParams, TrainParams
from pipeline.core.learn import models
from pipeline.core.learn.data import CachedBatches, Normalize, StreamedBatches, augment, decode, make_batches
from pipeline.core.learn.device import infer
from pipeline.core.learn.folders import read_classes, read_split
from pipeline.stages.train import __main__ as train_main
from pipeline.stages.train.live import LOGGED, epoch_logger
from pipeline.stages.train.loop import Recipe, fine_tune
from pipeline.stages.train.stage import Setup, prepare, train

pytestmark = pytest.mark.usefixtures("one_thread")  # one torch thread: see trainkit.single_thread

MOBILENET_FILE = "mobilenet_v2-b0353104.pth"


def wheel_file() -> Path:
    spec = importlib.util.find_spec(models.OFFLINE_WEIGHTS_PACKAGE)
    return Path(next(iter(spec.submodule_search_locations))) / "weights" / MOBILENET_FILE


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty torch hub folder, and any attempt to download weights fails the test."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse_download)
    return hub


# ---------------------------------------------------------------- learning
def test_fine_tune_learns_the_easy_two_class_split(trained):
    history = trained.result.history
    assert [h.phase for h in history] == ["frozen", "unfrozen", "unfrozen"]
    # train loss is against smoothed targets: it cannot fall below their entropy, so compare what is above it
    floor = smoothed_target_entropy(TrainParams().label_smoothing, classes=2)
    assert history[-1].train_loss - floor < 0.6 * (history[0].train_loss - floor)
    assert history[-1].val_loss < history[0].val_loss
    assert history[-1].val_accuracy >= 0.8  # chance is 0.5; 13 of 16 right by luck has p < 0.02


def smoothed_target_entropy(smoothing: float, classes: int) -> float:
    """The least cross-entropy against targets smoothed as ``F.cross_entropy(label_smoothing=...)`` does."""
    right, wrong = 1 - smoothing + smoothing / classes, smoothing / classes
    return -(right * math.log(right) + (classes - 1) * wrong * math.log(wrong)) if smoothing else 0.0


def test_stage_writes_model_metrics_and_curves(trained):
    ws = trained.path
    metrics = json.loads((ws / "metrics/train.json").read_text())
    best = max(trained.result.history, key=lambda h: (h.val_accuracy, h.epoch))
    assert metrics["best_epoch"] == best.epoch
    assert metrics["val_accuracy"] == pytest.approx(best.val_accuracy)
    assert (metrics["train_images"], metrics["val_images"], metrics["epochs"]) == (48, 16, 3)
    assert metrics["data"] == "cached"
    # dvclive's layout: one TSV per metric, one row per epoch (step = epoch), the latest epoch in metrics.json
    for name in LOGGED:
        with (ws / "dvclive/plots/metrics" / f"{name}.tsv").open() as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
        assert [int(r["step"]) for r in rows] == [1, 2, 3], name
        assert [float(r[name]) for r in rows] == pytest.approx([getattr(h, name) for h in trained.result.history])
    live = json.loads((ws / "dvclive/metrics.json").read_text())
    assert live["step"] == 3 and live["val_accuracy"] == pytest.approx(trained.result.history[-1].val_accuracy)
    assert not (ws / "plots/train_curves.csv").exists() and not (ws / "dvc.yaml").exists()
    with Image.open(ws / "reports/train/curves.png") as png:
        assert png.format == "PNG" and png.width > 300
    assert (f"val_accuracy {metrics['val_accuracy']:.3f} (epoch {best.epoch} of 3) -> models/model.pt"
            in trained.stdout)


def test_each_epoch_reaches_dvclive_as_soon_as_it_ends(tmp_path):
    # what `dvc exp show` reads while a run trains: the epoch that just ended, before the next one starts
    root = make_splits(tmp_path / "splits", {"train": 8, "val": 2})
    seen = []
    with epoch_logger(tmp_path / "dvclive") as log:
        def log_then_look(stats):
            log(stats)
            seen.append((stats.epoch, json.loads((tmp_path / "dvclive/metrics.json").read_text())))
        train(TrainParams(**{**TINY_TRAIN, "batch_size": 4}), RuntimeParams(**TINY_RUNTIME), root,
              on_epoch=log_then_look)
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    for epoch, summary in seen:
        assert summary["step"] == epoch and set(LOGGED) <= set(summary)


def test_saved_model_reloads_with_weights_only_and_predicts_the_same(trained):
    path = trained.path / "models/model.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["arch"] == "mobilenet_v2" and raw["img_size"] == 48 and raw["train"]["weights"] == "imagenet"
    assert raw["labels"] == ["Hamburger", "Submarine sandwich"]
    assert raw["dirnames"] == ["Hamburger", "Submarine_sandwich"]
    assert raw["mean"] == list(models.IMAGENET_MEAN) and raw["std"] == list(models.IMAGENET_STD)
    reloaded, info = models.load_checkpoint(path)
    before = trained.result.model
    val = sorted((trained.path / "data/splits/val").rglob("*.jpg"))
    images = torch.stack([decode(p, info.img_size) for p in val])
    normalize = Normalize(info.mean, info.std, torch.device("cpu"))
    expected = infer(before, images, torch.device("cpu"), normalize)
    got = infer(reloaded, images, torch.device("cpu"), normalize)
    torch.testing.assert_close(got, expected)
    truth = torch.tensor([info.dirnames.index(p.parent.name) for p in val])
    assert (got.argmax(1) == truth).float().mean() >= 0.8


def test_a_cpu_run_repeats_exactly(tmp_path):
    root = make_splits(tmp_path / "splits", {"train": 10, "val": 4})
    p = TrainParams(**{**TINY_TRAIN, "epochs": 1, "freeze_epochs": 0, "batch_size": 8})
    runtime = RuntimeParams(**TINY_RUNTIME)
    first, second = train(p, runtime, root), train(p, runtime, root)
    assert first.history[0].train_loss == second.history[0].train_loss
    for (name, a), b in zip(first.model.state_dict().items(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_fine_tune_only_trains_the_head_and_batchnorm_while_frozen(tmp_path):
    root = make_splits(tmp_path / "splits", {"train": 8, "val": 2})
    setup = prepare(TrainParams(**{**TINY_TRAIN, "batch_size": 4}), RuntimeParams(**TINY_RUNTIME), root)  # 4 steps: one-cycle needs a few
    conv_before = setup.model.conv1.weight.detach().clone()
    bn_before = setup.model.bn1.weight.detach().clone()
    head_before = setup.model.fc.weight.detach().clone()
    recipe = Recipe.of(TrainParams(lr=0.01, freeze_epochs=1, epochs=0, img_size=32))
    fine_tune(setup.model, setup.batches("train"), setup.batches("val"), recipe, setup.device, setup.normalize)
    assert torch.equal(setup.model.conv1.weight, conv_before)
    assert not torch.equal(setup.model.bn1.weight, bn_before)
    assert not torch.equal(setup.model.fc.weight, head_before)


def test_lr_spread_sets_how_far_the_earliest_layers_move(tmp_path):
    """train.lr_spread divides the earliest layers' rate: huge, conv1 hardly moves; 1, it moves as the head."""
    root = make_splits(tmp_path / "splits", {"train": 8, "val": 2})
    moved = {}
    for spread in (1.0, 1e6):
        p = TrainParams(**{**TINY_TRAIN, "batch_size": 4, "freeze_epochs": 0, "epochs": 1, "lr_spread": spread})
        setup = prepare(p, RuntimeParams(**TINY_RUNTIME), root)
        before = setup.model.conv1.weight.detach().clone()
        fine_tune(setup.model, setup.batches("train"), setup.batches("val"), Recipe.of(p), setup.device,
                  setup.normalize)
        moved[spread] = (setup.model.conv1.weight - before).abs().max().item()
    assert moved[1e6] < 1e-3 * moved[1.0]


# ---------------------------------------------------------------- data
def test_streamed_batches_give_the_same_images_as_the_cache(tmp_path):
    root = make_splits(tmp_path / "splits", {"train": 6, "val": 5})
    classes = read_classes(root)
    assert classes.labels == ["Hamburger", "Submarine sandwich"]
    val = read_split(root, "val", classes)
    cpu = torch.device("cpu")
    cached = make_batches(val, 24, 4, shuffle=False, device=cpu, workers=1, cache_mb=-1)
    streamed = make_batches(val, 24, 4, shuffle=False, device=cpu, workers=1, cache_mb=0)
    assert isinstance(cached, CachedBatches) and isinstance(streamed, StreamedBatches)
    assert len(cached) == len(streamed) == 3
    for (xa, ya), (xb, yb) in zip(cached, streamed, strict=True):
        assert xa.dtype == torch.uint8 and xa.shape[1:] == (3, 24, 24)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    train_split = read_split(root, "train", classes)
    shuffled = make_batches(train_split, 24, 4, shuffle=True, device=cpu, workers=0, cache_mb=-1)
    epochs = [torch.cat([y for _, y in shuffled]) for _ in range(2)]
    assert len(shuffled) == 3 and all(len(e) == 12 for e in epochs)  # drop_last: 12 of 12 images
    assert sorted(epochs[0].tolist()) == sorted(train_split.targets)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch


def test_augment_crops_resizes_and_flips_each_image_on_its_own():
    half = torch.zeros((1, 3, 40, 40), dtype=torch.uint8)
    half[..., 20:] = 255  # dark left half, bright right half
    images = half.repeat(64, 1, 1, 1)
    out = augment(images, 16, torch.Generator().manual_seed(0), min_scale=0.9)
    assert out.shape == (64, 3, 16, 16) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255.001  # bilinear mixes of 0..255 stay in range
    left, right = out[..., :4].mean((1, 2, 3)), out[..., -4:].mean((1, 2, 3))
    flipped = (left > right).sum().item()
    assert 16 < flipped < 48  # about half flipped, each by its own coin
    again = augment(images, 16, torch.Generator().manual_seed(0), min_scale=0.9)
    assert torch.equal(out, again)


def test_decode_squashes_any_image_to_an_upright_rgb_square(tmp_path):
    image = Image.new("L", (60, 20), 255)
    image.paste(0, (0, 0, 30, 20))  # stored dark left, bright right ...
    exif = image.getexif()
    exif[0x0112] = 6  # ... and tagged "rotate 90 degrees clockwise to view": dark top, bright bottom
    image.save(tmp_path / "grey.jpg", exif=exif)
    tensor = decode(tmp_path / "grey.jpg", 16).float()
    assert tensor.shape == (3, 16, 16)
    assert tensor[:, :6].mean() < 30 and tensor[:, -6:].mean() > 225
    assert torch.equal(tensor[0], tensor[1])  # greyscale became RGB
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="bad.jpg: cannot read image"):
        decode(tmp_path / "bad.jpg", 16)


# ---------------------------------------------------------------- weights
@pytest.mark.skipif(importlib.util.find_spec(models.OFFLINE_WEIGHTS_PACKAGE) is None, reason=NO_WEIGHTS)
def test_imagenet_weights_load_offline_from_the_wheel(no_download):
    model = models.build_model("mobilenet_v2", 2, "imagenet")
    official = torch.load(wheel_file(), weights_only=True)
    state = model.state_dict()
    body = [k for k in official if not k.startswith("classifier.")]
    assert len(body) > 300
    for key in body:
        assert torch.equal(state[key], official[key]), key
    assert state["classifier.1.weight"].shape == (2, 1280)


@pytest.mark.skipif(importlib.util.find_spec(models.OFFLINE_WEIGHTS_PACKAGE) is None, reason=NO_WEIGHTS)
def test_imagenet_weights_prefer_torch_hubs_folder_and_reject_a_damaged_copy(no_download, monkeypatch):
    checkpoints = no_download / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copy(wheel_file(), checkpoints / MOBILENET_FILE)
    official = torch.load(wheel_file(), weights_only=True)
    monkeypatch.setattr(models, "OFFLINE_WEIGHTS_PACKAGE", "no_such_wheel")  # only the hub copy is left
    assert models.imagenet_candidates("https://x/" + MOBILENET_FILE) == [checkpoints / MOBILENET_FILE]
    model = models.build_model("mobilenet_v2", 3, "imagenet")
    assert torch.equal(model.state_dict()["features.0.0.weight"], official["features.0.0.weight"])
    (checkpoints / MOBILENET_FILE).write_bytes(b"half a download")
    with pytest.raises(UserError, match="damaged weights file"):
        models.build_model("mobilenet_v2", 3, "imagenet")


def test_weights_from_a_file_keep_the_body_and_replace_the_head(tmp_path):
    torch.manual_seed(1)
    donor = torchvision.models.resnet18(num_classes=1000)
    torch.save(donor.state_dict(), tmp_path / "donor.pth")
    model = models.build_model("resnet18", 5, str(tmp_path / "donor.pth"))
    assert torch.equal(model.layer4[1].conv2.weight, donor.layer4[1].conv2.weight)
    assert model.fc.weight.shape == (5, 512)
    with pytest.raises(UserError, match="does not fit this architecture"):
        models.build_model("mobilenet_v2", 5, str(tmp_path / "donor.pth"))
    with pytest.raises(UserError, match="not found"):
        models.build_model("resnet18", 5, str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------- command line
def test_train_without_splits_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_params(tmp_path)
    assert run_cli(train_main.main, []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data/splits/train not found" in err


def test_lr_find_suggests_a_rate_from_the_valley(tmp_path, monkeypatch, capsys):
    rates = [10 ** (-6 + i * 0.1) for i in range(60)]
    losses = [1.0] * 20 + [1.0 - 0.02 * i for i in range(30)] + [0.5 + 0.2 * i for i in range(10)]
    suggestion = lr_find.valley(rates, losses)
    assert rates[22] <= suggestion <= rates[45]  # inside the falling stretch, not at its ends
    others = lr_find.suggest(rates, losses)
    assert others["valley"] == lr_find.valley(rates[6:-5], losses[6:-5])
    assert others["minimum"] == pytest.approx(rates[49] / 10)  # lowest loss at index 49
    assert rates[19] <= others["steep"] <= rates[49]
    make_splits(tmp_path / "data/splits", {"train": 8, "val": 2})
    write_params(tmp_path, batch_size=8)
    monkeypatch.chdir(tmp_path)
    assert run_cli(lr_find.main, ["--iters", "12", "--start", "1e-5", "--end", "1", "--out", "lr.png"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("suggested lr: ")
    assert 1e-5 <= float(line.split()[2]) <= 1
    assert Image.open(tmp_path / "lr.png").format == "PNG"


def test_setup_batches_use_the_larger_cache_for_training(tmp_path):
    root = make_splits(tmp_path / "splits", {"train": 4, "val": 2})
    setup: Setup = prepare(TrainParams(**TINY_TRAIN), RuntimeParams(**TINY_RUNTIME), root)
    train_images, _ = next(iter(setup.batches("train")))
    val_images, _ = next(iter(setup.batches("val")))
    assert train_images.shape[-1] == round(32 * 8 / 7) and val_images.shape[-1] == 32
