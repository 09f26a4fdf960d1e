"""The audit: real embeddings (offline ImageNet weights), real cleanlab, real images; no stubbed scores.

Digits (scikit-learn's real handwritten ones) with a few labels flipped stand in for a dataset that is not
ours; quality checks run on real pictures made dark, flat, blurred or grey.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from auditkit import digit_images, write_class_folders
from clean_inputs import inside
from PIL import Image, ImageFilter
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from trainkit import needs_offline_weights

from pipeline import audit as audit_command
from pipeline.core.audit.embed import EmbeddingCache, embed_into_cache
from pipeline.core.audit.findings import NEIGHBOURS, linear_model, out_of_sample_probs, outlier_scores
from pipeline.core.audit.ledger import measure
from pipeline.core.audit.quality import quality_stats
from pipeline.core.base import paths
from pipeline.core.base.errors import run_cli
from pipeline.core.base.io import write_parquet
from pipeline.core.base.params import AuditParams
from pipeline.stages.audit import __main__ as audit_stage

#: digits of three classes, enough per class for 5-fold cross-validation to judge the labels
CLASSES = (0, 1, 7)
PER_CLASS = 40
FLIPPED = 4


def three_digits() -> tuple[list[Image.Image], np.ndarray, np.ndarray]:
    """The first :data:`PER_CLASS` digits of each of :data:`CLASSES`, 24 px; their truth and noisy labels."""
    images, truth = digit_images(24)
    chosen = np.concatenate([np.flatnonzero(truth == c)[:PER_CLASS] for c in CLASSES])
    truth = truth[chosen]
    noisy = truth.copy()
    rng = np.random.default_rng(1)
    flipped = rng.choice(len(truth), FLIPPED, replace=False)
    noisy[flipped] = [CLASSES[(CLASSES.index(t) + 1) % len(CLASSES)] for t in truth[flipped]]
    return [images[i] for i in chosen], truth, noisy


def tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def photo() -> Image.Image:
    """A photo-sized picture of real strokes, edges and grey levels: a mosaic of 48 handwritten digits."""
    images, _ = digit_images(32)
    mosaic = Image.new("RGB", (256, 192))
    for i, image in enumerate(images[:48]):
        mosaic.paste(image, ((i % 8) * 32, (i // 8) * 32))
    return mosaic


def test_quality_finds_dark_light_flat_blurry_and_slivers() -> None:
    base = quality_stats(photo())
    params = AuditParams()
    assert base["blurry"] >= params.blurry_threshold and base["low_information"] >= params.low_information_threshold
    dark = quality_stats(photo().point(lambda v: v // 12))
    assert dark["dark"] < params.dark_threshold
    light = quality_stats(photo().point(lambda v: 240 + v // 20))
    assert light["light"] > params.light_threshold
    flat = quality_stats(Image.new("RGB", (200, 150), (90, 140, 60)))
    assert flat["low_information"] < params.low_information_threshold
    blurred = quality_stats(photo().filter(ImageFilter.GaussianBlur(8)))
    assert blurred["blurry"] < params.blurry_threshold
    sliver = quality_stats(photo().resize((300, 40)))
    assert sliver["odd_aspect"] < params.odd_aspect_threshold


def test_grey_photos_are_judged_like_their_colour_twins() -> None:
    colour = photo()
    tinted = Image.merge("RGB", [c.point(lambda v, k=k: min(255, v + 40 * k)) for k, c in enumerate(colour.split())])
    grey = tinted.convert("L").convert("RGB")
    assert quality_stats(grey) == quality_stats(tinted.convert("L"))
    params = AuditParams()
    stats = quality_stats(grey)
    assert stats["dark"] >= params.dark_threshold and stats["light"] <= params.light_threshold
    assert stats["low_information"] >= params.low_information_threshold and stats["blurry"] >= params.blurry_threshold


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    root = tmp_path_factory.mktemp("digits") / "digits"
    images, truth, noisy = three_digits()
    write_class_folders(root, images, noisy)
    return root, truth, noisy


@needs_offline_weights
def _mean_cosine_to_nearest(features: np.ndarray, among: np.ndarray, k: int) -> np.ndarray:
    """Brute force: each row's mean cosine distance to its ``k`` nearest rows of ``among``, itself excluded."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    distance = 1 - unit @ unit[among].T
    distance[among, np.arange(len(among))] = np.inf
    return np.sort(distance, axis=1)[:, :k].mean(axis=1)


def test_outliers_are_judged_against_a_bounded_sample_of_crops() -> None:
    """Every crop against every other is quadratic; beyond ``reference`` crops the neighbours come from an
    evenly spaced sample of them (the whole set up to that size), so the cost grows linearly."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    features = (centres[rng.integers(3, size=300)] + rng.normal(size=(300, 16))).astype(np.float32)
    features[7] = -centres.sum(axis=0)  # far from all others
    sampled, cut = outlier_scores(features, 3.0, reference=60)
    among = np.linspace(0, 299, 60).round().astype(np.int64)
    assert np.allclose(sampled, _mean_cosine_to_nearest(features, among, NEIGHBOURS), atol=1e-5)
    assert sampled[7] > cut
    whole, _ = outlier_scores(features, 3.0, reference=300)
    assert np.allclose(whole, _mean_cosine_to_nearest(features, np.arange(300), NEIGHBOURS), atol=1e-5)


def traced_peak(call):
    """``call()``'s result and the most bytes Python and numpy held at once while it ran (tracemalloc)."""
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_out_of_sample_probs_are_sklearns_with_one_copy_of_the_crops_less() -> None:
    """sklearn's ``cross_val_predict`` through the scaler-and-model pipeline held 2.4x the embeddings at 5 folds
    (each fold's training rows, a float64 copy while fitting the scaler, the standardised copy); one copy
    standardised in place a block of columns at a time gives the same probabilities, to the bit."""
    rng = np.random.default_rng(0)
    labels = rng.integers(3, size=1500)
    features = (rng.normal(size=(3, 1280))[labels] * 2 + rng.normal(size=(1500, 1280))).astype(np.float32)
    probs, peak = traced_peak(lambda: out_of_sample_probs(features, labels, 5, 0))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    assert np.array_equal(probs, cross_val_predict(linear_model(), features, labels, cv=cv, method="predict_proba"))
    assert peak < 1.2 * features.nbytes, peak / features.nbytes


def test_cached_embeddings_are_held_once(tmp_path: Path) -> None:
    """Every crop's vector went into a dict and then into a stacked copy: twice the embeddings (1.1 GB at 112k
    crops). They now go straight into one matrix."""
    rng = np.random.default_rng(0)
    files, cache = [], EmbeddingCache(tmp_path / "cache", 24)
    for i in range(600):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(path)
        cache.put(hashlib.sha256(path.read_bytes()).hexdigest(), rng.normal(size=1280).astype(np.float32))
        files.append(path)
    measured, peak = traced_peak(lambda: measure(files, 24, tmp_path / "cache", "cpu"))
    assert measured.computed == 0 and measured.features.shape == (600, 1280)
    assert np.array_equal(measured.features[7], cache.get(measured.sha256[7]))
    assert peak < 1.5 * measured.features.nbytes, peak / measured.features.nbytes


def test_a_run_with_every_embedding_cached_never_imports_torch(tmp_path: Path) -> None:
    """torch alone is ~650 MiB of RSS: a re-run with other thresholds (every embedding cached) leaves it to
    the findings."""
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(tmp_path / "cache", 24)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        cache.put(hashlib.sha256((tmp_path / f"{i}.png").read_bytes()).hexdigest(), np.ones(1280, np.float32))
    script = ("import sys; from pathlib import Path; from pipeline.core.audit.ledger import measure; "
              f"m = measure([Path({str(tmp_path)!r}) / f'{{i}}.png' for i in range(3)], 24, "
              f"Path({str(tmp_path / 'cache')!r}), 'cpu'); print(m.computed, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "False"], done.stdout + done.stderr


def test_a_run_that_computes_embeddings_keeps_torch_out_of_its_own_process(tmp_path: Path) -> None:
    """The backbone runs in a child process: the audit's process holds the embeddings and fits the label-issue
    model without torch's ~650 MiB beside them (at 100k photos the stage peaked at 2,234 MiB with it)."""
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, size=(24, 24, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    script = ("import sys; from pathlib import Path; from pipeline.core.audit.ledger import measure; "
              f"m = measure([Path({str(tmp_path)!r}) / f'{{i}}.png' for i in range(3)], 24, "
              f"Path({str(tmp_path / 'cache')!r}), 'cpu'); "
              "print(m.computed, m.features.shape[0], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["3", "3", "False"], done.stdout + done.stderr
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == 3  # and the child left them in the cache


def test_the_embedding_process_never_caches_a_file_under_another_content(tmp_path: Path) -> None:
    # a crop rewritten between the audit's read and the child's must not be cached under the old sha256
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(tmp_path / "a.png")
    good = hashlib.sha256((tmp_path / "a.png").read_bytes()).hexdigest()
    items = [(str(tmp_path / "a.png"), "0" * 64), (str(tmp_path / "a.png"), good)]
    assert embed_into_cache(items, 24, str(tmp_path / "cache"), "cpu", 64, 10**6) == 1
    cache = EmbeddingCache(tmp_path / "cache", 24)
    assert cache.get("0" * 64) is None and cache.get(good) is not None


def test_audit_a_folder_that_is_not_ours_finds_the_flipped_labels(digits_folder, tmp_path, capsys) -> None:
    root, truth, noisy = digits_folder
    before = tree(root)
    assert run_cli(audit_command.main, [str(root), "--out", str(tmp_path / "out")]) == 0
    assert tree(root) == before  # nothing in DIR changed
    report = pd.read_csv(tmp_path / "out/audit.csv", keep_default_na=False)
    assert list(report.columns) == audit_command.CSV_COLUMNS and len(report) == len(truth)
    index = report["path"].map(lambda p: int(Path(p).stem))
    flipped = set(np.flatnonzero(truth != noisy))
    found = set(index[report["issue"] == "label_issue"])
    assert len(found & flipped) >= FLIPPED - 1 and len(found - flipped) <= 2, (found, flipped)
    suggested = report[report["issue"] == "label_issue"].set_index(index[report["issue"] == "label_issue"])
    for i in found & flipped:
        assert suggested.loc[i, "suggested_label"] == f"digit_{truth[i]}"
    assert (tmp_path / "out/index.html").read_text().count("<img") >= 1
    assert "embeddings computed" in capsys.readouterr().out


def test_audit_refuses_an_output_inside_the_folder(digits_folder, capsys) -> None:
    root, _, _ = digits_folder
    assert run_cli(audit_command.main, [str(root), "--out", str(root / "report")]) == 2
    assert "changes nothing in the folder" in capsys.readouterr().err
    assert not (root / "report").exists()


def test_audit_help(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        audit_command.main(["--help"])
    assert exit_info.value.code == 0 and "class-folder" in capsys.readouterr().out


def write_clean_workspace(root: Path, images: list[Image.Image], labels: np.ndarray, audit: dict) -> None:
    """data/crops and a clean manifest holding ``images`` as the kept crops (plus one rejected row)."""
    rows = []
    for i, (image, label) in enumerate(zip(images, labels)):
        crop_path = f"digit_{label}/{i:016x}_0.jpg"
        (root / paths.CROPS_DIR / crop_path).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / paths.CROPS_DIR / crop_path, quality=95)
        rows.append({"ImageID": f"{i:016x}", "BoxIndex": 0, "Label": f"digit_{label}", "crop_path": crop_path,
                     "keep": True, "reject_reason": ""})
    rows.append({"ImageID": f"{999:016x}", "BoxIndex": 0, "Label": "digit_0", "crop_path": "", "keep": False,
                 "reject_reason": "corrupt"})
    write_parquet(pd.DataFrame(rows), root / paths.CLEAN_MANIFEST)
    (root / "params.yaml").write_text(yaml.safe_dump({"audit": audit, "runtime": {"device": "cpu"}}))


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray, str]:
    """The audit stage once on three digit classes with flipped labels, one dark and one flat crop planted."""
    root = tmp_path_factory.mktemp("stage")
    images, truth, noisy = three_digits()
    images[5] = images[5].point(lambda v: v // 16)            # dark
    images[50] = Image.new("RGB", (24, 24), (128, 128, 128))  # flat
    write_clean_workspace(root, images, noisy, {"blurry": "off"})
    with inside(root):
        assert run_cli(audit_stage.main, []) == 0
    return root, truth, noisy, ""


@needs_offline_weights
def test_stage_ledger_has_one_row_per_kept_crop_and_finds_what_was_planted(stage_run) -> None:
    root, truth, noisy, _ = stage_run
    ledger = pd.read_parquet(root / paths.AUDIT_LEDGER)
    assert len(ledger) == len(truth)
    assert {"ImageID", "BoxIndex", "Label", "crop_path", "decision", "issue", "score", "threshold",
            "suggested_label"} <= set(ledger.columns)
    by_index = ledger.set_index(ledger["ImageID"].map(lambda i: int(i, 16)))
    assert by_index.loc[5, "issue"] == "dark" and by_index.loc[5, "decision"] == "rejected"
    assert by_index.loc[50, "issue"] == "low_information" and by_index.loc[50, "decision"] == "rejected"
    flipped = [i for i in np.flatnonzero(truth != noisy) if i not in (5, 50)]
    assert sum(by_index.loc[i, "issue"] == "label_issue" for i in flipped) >= len(flipped) - 1
    assert (root / paths.AUDIT_REPORT / "index.html").is_file()


@needs_offline_weights
def test_rerun_with_other_actions_computes_no_embedding(stage_run, capsys) -> None:
    root, truth, noisy, _ = stage_run
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["audit"] = {"blurry": "off", "label_issue": "flag", "dark": "off"}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    with inside(root):
        assert run_cli(audit_stage.main, []) == 0
    assert "(0 embeddings computed" in capsys.readouterr().out
    ledger = pd.read_parquet(root / paths.AUDIT_LEDGER)
    assert set(ledger.loc[ledger["issue"] == "label_issue", "decision"]) == {"flagged"}
    assert (ledger["issue"] != "dark").all()
