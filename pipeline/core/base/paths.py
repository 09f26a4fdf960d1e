"""Where every stage reads and writes, relative to the working directory (DVC's convention).

``dvc.yaml`` names the same paths; keep the two in step.
"""
from pathlib import Path

#: files counted as images in class folders (crops are always .jpg; pulled or hand-made folders may differ)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

DATA = Path("data")
METADATA_DIR = DATA / "metadata"          # downloaded CSV/JSON + the Parquet cache
METADATA_RAW = METADATA_DIR / "raw"       # <official path under source.base_url>, as downloaded
METADATA_REJECTED = METADATA_DIR / "rejected"  # <official path>: a raw file that could not be converted, set aside
BOXES_DIR = METADATA_DIR / "boxes"        # LabelName=<URI-encoded MID>/part-0.parquet
IMAGES_TABLE = METADATA_DIR / "images.parquet"
CLASSES_TABLE = METADATA_DIR / "classes.parquet"
HIERARCHY_JSON = METADATA_DIR / "hierarchy.json"
METADATA_STAMP = METADATA_DIR / "cache.json"  # which raw files (size, mtime) each Parquet output came from
SELECTED = DATA / "selected.parquet"      # one row per chosen box
IMAGES_DIR = DATA / "images"              # <ImageID>.<ext>
IMAGES_MANIFEST = IMAGES_DIR / "manifest.parquet"
CROPS_DIR = DATA / "crops"                # <label>/<ImageID>_<box>.jpg
CROPS_MANIFEST = CROPS_DIR / "manifest.parquet"
CLEAN_DIR = DATA / "clean"
CLEAN_MANIFEST = CLEAN_DIR / "manifest.parquet"
AUDIT_DIR = DATA / "audit"
AUDIT_LEDGER = AUDIT_DIR / "ledger.parquet"      # one row per kept crop: kept, flagged or rejected, and why
EMBEDDINGS_DIR = DATA / "embeddings"      # <backbone>-<size>px/<sha[:2]>/<sha256>.npy: the audit's cache
SPLITS_DIR = DATA / "splits"              # {train,val,test}/<label>/<file>.jpg
SPLITS_MANIFEST = SPLITS_DIR / "splits.parquet"
SPLITS_LABELS = SPLITS_DIR / "labels.json"       # {label_dirname: display name}
SPLIT_NAMES = ("train", "val", "test")    # the split folders, in this order everywhere
LOCKS_DIR = DATA / ".locks"               # <stage>.lock: one run of a stage at a time (core/base/locks.py)
SHARDS_DIR = DATA / "shards"              # {train,val,test}-NNNNNN.tar (WebDataset) + index.json
PACKAGE_INFO = DATA / "package.json"
QUILT_REGISTRY = DATA / "quilt-registry"  # local quilt3 registry when package.registry is empty
MODELS_DIR = Path("models")
MODEL = MODELS_DIR / "model.pt"
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")
REPORTS_DIR = Path("reports")
DATASET_REPORT = REPORTS_DIR / "dataset"     # index.html + PNG contact sheets
AUDIT_REPORT = REPORTS_DIR / "audit"         # index.html + PNG contact sheets of the audit's findings
CLASS_BALANCE = PLOTS_DIR / "class_balance.csv"
