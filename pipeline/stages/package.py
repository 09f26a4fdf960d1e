"""``python -m pipeline.stages.package``: publish the curated dataset as a versioned quilt3 package.

The package is what colleagues pull (``python -m pipeline.pull`` or plain quilt3), so it carries its
own provenance and license duties:

- ``splits/``: the train/val/test class folders (ImageFolder layout), ``splits.parquet``, ``labels.json``;
- ``shards/``: the same images as WebDataset tar shards with their ``index.json``, when the shards stage ran;
- ``manifests/``: ``selected.parquet`` (the chosen boxes), ``images.parquet`` (what the download got),
  ``clean.parquet`` (what was kept or rejected, and why);
- ``metrics/``: ``train.json`` and ``eval.json`` when the model stages ran;
- ``README.md``: labels, counts per split, source version, params, and how to pull it;
- ``ATTRIBUTION.csv``: author, profile, landing page and license of every photo in the splits (Open
  Images photos are CC BY 2.0, which requires attribution).

The package metadata holds the params that shape the content, the Open Images version, the counts and
the code's git commit. Nothing time-dependent goes in: quilt3's top hash covers the metadata, and the
same inputs must give the same top hash.

With ``package.registry`` set (``s3://bucket``) the package is pushed there; empty, it is built into
the local registry ``data/quilt-registry``, so nothing touches S3 or the user's home folder. How
objects are stored, and why a failed push leaves nothing half registered: :mod:`pipeline.core.registry`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import yaml

from pipeline.core import paths
from pipeline.core.errors import UserError, run_cli
from pipeline.core.io import atomic_path, read_parquet
from pipeline.core.params import Params, load_params
from pipeline.core.registry import Registry, check_name, publish

#: params sections recorded in the package: the ones that decide its content and its metrics. Left out:
#: ``download`` (transport and politeness; its effects are in manifests/images.parquet) and ``package``
#: (where and under which name it is published, not what it is). dvc.yaml's package stage lists the same.
RECORDED_PARAMS = ("labels", "source", "select", "crop", "clean", "split", "train", "evaluate")
ATTRIBUTION_COLUMNS = ["ImageID", "Title", "Author", "AuthorProfileURL", "OriginalLandingURL", "License"]
#: logical key in the package -> where the file is in the working directory
MANIFESTS = {
    "manifests/selected.parquet": paths.SELECTED,
    "manifests/images.parquet": paths.IMAGES_MANIFEST,
    "manifests/clean.parquet": paths.CLEAN_MANIFEST,
}
METRICS = {f"metrics/{name}": paths.METRICS_DIR / name for name in ("train.json", "eval.json")}
IMAGES_LICENSE = "CC BY 2.0"  # how Open Images lists its photos; each one needs its author credited
ANNOTATIONS_LICENSE = "CC BY 4.0 (Google LLC)"
# A spreadsheet runs a cell that starts with one of these as a formula; the text comes from Flickr.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def input_files() -> dict[str, Path]:
    """Every file that goes into the package as it is, by logical key (sorted, hidden files left out)."""
    for required in (paths.SPLITS_MANIFEST, paths.SPLITS_LABELS, *MANIFESTS.values()):
        if not required.is_file():
            raise UserError(f"{required} not found: run the stages before package first (dvc repro)")
    files = {
        f"splits/{path.relative_to(paths.SPLITS_DIR).as_posix()}": path
        for path in sorted(paths.SPLITS_DIR.rglob("*"))
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(paths.SPLITS_DIR).parts)
    }
    files.update({f"shards/{path.name}": path for path in sorted(paths.SHARDS_DIR.glob("*"))  # when the stage ran
                  if path.is_file() and not path.name.startswith(".")})
    files.update(MANIFESTS)
    files.update({key: path for key, path in METRICS.items() if path.is_file()})
    return files


def count_images(splits_dir: Path, labels: dict[str, str]) -> dict[str, dict[str, int]]:
    """``{split: {display name: images}}`` from the files on disk: what the package really holds."""
    return {
        split: {
            display: sum(1 for f in (splits_dir / split / dirname).glob("*")
                         if f.suffix.lower() in paths.IMAGE_SUFFIXES)
            for dirname, display in sorted(labels.items(), key=lambda item: item[1])
        }
        for split in paths.SPLIT_NAMES
    }


def require_columns(table: pd.DataFrame, columns: Sequence[str], path: Path) -> pd.DataFrame:
    lacking = [column for column in columns if column not in table.columns]
    if lacking:
        raise UserError(f"{path} lacks column(s) {', '.join(lacking)}: run the stage that writes it again")
    return table


def attribution(selected: pd.DataFrame, image_ids: Sequence[str]) -> pd.DataFrame:
    """One row per photo in the splits, sorted by ImageID, with what CC BY 2.0 asks to credit."""
    require_columns(selected, ATTRIBUTION_COLUMNS, paths.SELECTED)
    info = selected.drop_duplicates("ImageID").set_index("ImageID")
    wanted = sorted(set(image_ids))
    missing = [image_id for image_id in wanted if image_id not in info.index]
    if missing:
        raise UserError(
            f"{len(missing)} image(s) in {paths.SPLITS_MANIFEST} are not in {paths.SELECTED} (e.g. {missing[0]}): "
            "the inputs come from different runs; run dvc repro"
        )
    table = info.loc[wanted, ATTRIBUTION_COLUMNS[1:]].fillna("").astype(str)
    return table.map(_spreadsheet_safe).rename_axis("ImageID").reset_index()


def _spreadsheet_safe(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_START) else text


def git_commit() -> str:
    """The commit of the code that made the package, or ``unknown`` (no git, or not run from a checkout)."""
    code_dir = Path(__file__).resolve().parents[1]  # pipeline/
    try:
        result = subprocess.run(
            ["git", "-C", str(code_dir), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=30, check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = result.stdout.splitlines()
    # The module must belong to that repository (a venv inside some other checkout does not count).
    if result.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() / "pipeline" != code_dir:
        return "unknown"
    return lines[1]


def package_metadata(params: Params, counts: dict[str, dict[str, int]], photos: int, commit: str) -> dict:
    """The package-level metadata: deterministic, JSON-plain, no timestamps."""
    recorded = params.to_dict()
    return {
        "dataset": {
            "labels": sorted(counts[paths.SPLIT_NAMES[0]]),
            "counts": counts,
            "images": sum(sum(per_label.values()) for per_label in counts.values()),
            "photos": photos,
        },
        "source": {
            "name": "Open Images",
            "version": params.source.version,
            "subsets": list(params.source.subsets),
            "images": params.source.images,
        },
        "params": {section: recorded[section] for section in RECORDED_PARAMS},
        "code": {"git_commit": commit},
        "license": {"images": f"{IMAGES_LICENSE} (credit each photo: ATTRIBUTION.csv)",
                    "annotations": ANNOTATIONS_LICENSE},
    }


def render_readme(name: str, registry: Registry, meta: dict, metrics: dict[str, dict]) -> str:
    """The dataset's README.md (no dates or hashes, so it never changes the top hash by itself)."""
    counts = meta["dataset"]["counts"]
    labels = meta["dataset"]["labels"]
    splits = list(counts)
    rows = [f"| {label} | " + " | ".join(str(counts[s][label]) for s in splits)
            + f" | {sum(counts[s][label] for s in splits)} |" for label in labels]
    totals = [sum(counts[s].values()) for s in splits]
    source = meta["source"]
    lines = [
        f"# {name}",
        "",
        f"Image classification dataset of {', '.join(labels)}: boxes from {source['name']} {source['version']} "
        f"({', '.join(source['subsets'])}), cropped, cleaned (broken, placeholder, changed and duplicate "
        "images removed) and split into train/val/test without leaks (all crops of a photo, and its near "
        "duplicates, share one split). Made by openimages-pipeline.",
        "",
        "## Contents",
        "",
        "| label | " + " | ".join(splits) + " | total |",
        "|---|" + "---|" * (len(splits) + 1),
        *rows,
        "| **total** | " + " | ".join(map(str, totals)) + f" | {sum(totals)} |",
        "",
        f"{meta['dataset']['images']} images cropped from {meta['dataset']['photos']} photos.",
        "",
        "- `splits/{train,val,test}/<label>/<ImageID>_<BoxIndex>.jpg`: class folders, ready for "
        "`torchvision.datasets.ImageFolder`; `splits/splits.parquet` lists every file with its split and "
        "group, `splits/labels.json` maps folder names to label names.",
        "- `manifests/selected.parquet` (the chosen boxes and their photos), `manifests/images.parquet` "
        "(every download and its outcome), `manifests/clean.parquet` (every crop: kept or why rejected).",
        "- `metrics/`: the model trained on this version (" + (", ".join(sorted(metrics)) or "none") + ").",
        "- `ATTRIBUTION.csv`: who took each photo, where it is, and its license.",
        "",
    ]
    if metrics:
        lines += ["## Metrics", "", "| file | metric | value |", "|---|---|---|"]
        for file, values in sorted(metrics.items()):
            lines += [f"| {file} | {key} | {value:.4g} |" for key, value in sorted(values.items())]
        lines.append("")
    folder = name.split("/")[1]
    lines += [
        "## Get it",
        "",
        "With openimages-pipeline (checks every file against the package's hashes):",
        "",
        "```bash",
        f"python -m pipeline.pull {name} --registry {registry.shown} --list",
        f"python -m pipeline.pull {name} --registry {registry.shown} --dest {folder}  # the latest version",
        f"python -m pipeline.pull {name} --registry {registry.shown} --hash TOPHASH --dest {folder}",
        "```",
        "",
        "With plain quilt3:",
        "",
        "```bash",
        f"quilt3 install {name} --registry {registry.shown} --top-hash TOPHASH --dest {folder}",
        "```",
        "",
        "```python",
        "import quilt3",
        f'pkg = quilt3.Package.browse("{name}", registry="{registry.shown}")  # top_hash="..." for a version',
        f'pkg.fetch("{folder}/")',
        "```",
        "",
        "S3-compatible stores (MinIO, ...): set `AWS_ENDPOINT_URL_S3`; credentials come from the usual AWS "
        "settings (`AWS_PROFILE`, `~/.aws/credentials`).",
        "",
        "## License and attribution",
        "",
        f"The photos are from {source['name']}, which lists them as {IMAGES_LICENSE}: reuse needs credit to "
        "each author. `ATTRIBUTION.csv` has, per photo, its title, author, author's profile, original page "
        f"and license. The annotations are {ANNOTATIONS_LICENSE}.",
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(meta["params"], sort_keys=False).rstrip(),
        "```",
        "",
        f"Code: openimages-pipeline at git commit `{meta['code']['git_commit']}`.",
        "",
    ]
    return "\n".join(lines)


def read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a JSON object")
    return value


def scalar_metrics(files: dict[str, Path]) -> dict[str, dict[str, float]]:
    """Top-level numbers of each metrics file, for the README's table."""
    found = {}
    for key in METRICS:
        if key in files:
            values = read_json_object(files[key])
            found[key] = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return found


def write_package_info(name: str, registry: str, top_hash: str) -> None:
    """``data/package.json``, written atomically (DVC's output for this stage)."""
    with atomic_path(paths.PACKAGE_INFO) as tmp:
        tmp.write_text(json.dumps({"name": name, "registry": registry, "top_hash": top_hash}, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.package",
        description="Publish data/splits, the manifests, the metrics, a README and ATTRIBUTION.csv as a quilt3 "
        "package: pushed to package.registry (s3://bucket), or built into data/quilt-registry when it is empty.",
    )
    parser.parse_args(argv)
    params = load_params()
    name = check_name(params.package.name, "params.yaml: package.name")
    registry = Registry.parse(params.package.registry or str(paths.QUILT_REGISTRY), "params.yaml: package.registry")

    files = input_files()
    labels = read_json_object(paths.SPLITS_LABELS)
    counts = count_images(paths.SPLITS_DIR, labels)
    splits_table = require_columns(read_parquet(paths.SPLITS_MANIFEST, "splits"), ["ImageID"], paths.SPLITS_MANIFEST)
    credits = attribution(read_parquet(paths.SELECTED, "selected boxes"), splits_table["ImageID"].tolist())
    meta = package_metadata(params, counts, len(credits), git_commit())

    paths.DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.DATA, prefix=".package-") as tmp:
        readme, credits_csv = Path(tmp) / "README.md", Path(tmp) / "ATTRIBUTION.csv"
        readme.write_text(render_readme(name, registry, meta, scalar_metrics(files)))
        credits.to_csv(credits_csv, index=False, lineterminator="\n")
        files_and_docs = {**files, "README.md": readme, "ATTRIBUTION.csv": credits_csv}
        top_hash = publish(registry, name, files_and_docs, meta, params.package.message)

    write_package_info(name, registry.shown, top_hash)
    total = meta["dataset"]["images"]
    print(f"package {name}@{top_hash[:12]} in {registry.shown}: {total} images, {len(files) + 2} files")
    print(f"pull it: python -m pipeline.pull {name} --registry {registry.shown} --hash {top_hash[:12]} --dest DIR")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
