"""The ``README.md`` of the dataset package and of the model package.

Each README is a file of its package, so it is covered by the top hash: it says nothing that changes
without the content changing (no dates, no hashes of itself, no machine, no registry: the reader found the
package in one, and the commands say ``--registry REGISTRY``).
"""
from __future__ import annotations

import yaml

from pipeline.stages.package.naming import model_name


def _how_to_pull(name: str, example: str) -> list[str]:
    """How to pull the package; ``example`` is a line of Python reading one entry with quilt3."""
    folder = name.split("/")[1]
    return [
        "## Get it",
        "",
        "`REGISTRY` is where you found this package: `s3://bucket`, or a registry folder.",
        "With openimages-pipeline (checks every file against the package's hashes):",
        "",
        "```bash",
        f"python -m pipeline.pull {name} --registry REGISTRY --list",
        f"python -m pipeline.pull {name} --registry REGISTRY --dest {folder}  # the latest version",
        f"python -m pipeline.pull {name} --registry REGISTRY --hash TOPHASH --dest {folder}",
        "```",
        "",
        "With plain quilt3:",
        "",
        "```bash",
        f"quilt3 install {name} --registry REGISTRY --top-hash TOPHASH --dest {folder}",
        "```",
        "",
        "```python",
        "import quilt3",
        f'pkg = quilt3.Package.browse("{name}", registry="REGISTRY")  # top_hash="..." for a version',
        example,
        f'pkg.fetch("{folder}/")',
        "```",
        "",
        "S3-compatible stores (MinIO, ...): set `AWS_ENDPOINT_URL_S3`; credentials come from the usual AWS "
        "settings (`AWS_PROFILE`, `~/.aws/credentials`).",
        "",
    ]


def _code(meta: dict) -> str:
    code = meta["code"]
    return f"Code: {code['package']} {code['version']} (source sha256 `{code['sha256'][:16]}`)."


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def dataset_readme(name: str, meta: dict) -> str:
    """The dataset's README.md: contents, counts, licences with their duties, how to get it, params."""
    counts = meta["dataset"]["counts"]
    labels = meta["dataset"]["labels"]
    splits = list(counts)
    rows = [f"| {label} | " + " | ".join(str(counts[s][label]) for s in splits)
            + f" | {sum(counts[s][label] for s in splits)} |" for label in labels]
    totals = [sum(counts[s].values()) for s in splits]
    source, licences = meta["source"], meta["license"]["images"]
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
        "- `shards/{train,val,test}-NNNNNN.tar`: every crop, as WebDataset shards (per crop `<label>/<ImageID>_"
        "<BoxIndex>.jpg`, `.cls` its class index, `.json` its label and path); `shards/index.json` lists each "
        "split's shards with their sizes and sha256. `python -m pipeline.pull` unpacks them into class folders "
        "`splits/{train,val,test}/<label>/<ImageID>_<BoxIndex>.jpg`, ready for "
        "`torchvision.datasets.ImageFolder` (`--shards-only` keeps the tars instead, to stream them).",
        "- `splits/splits.parquet` lists every crop with its split, path and group; `splits/labels.json` maps "
        "folder names to label names.",
        "- `manifests/selected.parquet` (the chosen boxes and their photos), `manifests/images.parquet` "
        "(every download and its outcome), `manifests/clean.parquet` (every crop: kept or why rejected).",
        "- `ATTRIBUTION.csv`: who took each photo, where it is, and its licence.",
        f"- The model trained on it, with its metrics, is the package `{model_name(name)}` (its metadata names "
        "this package's top hash).",
        "",
        *_how_to_pull(name, 'pkg["manifests/clean.parquet"]()  # parquet, json and csv entries: DataFrames, dicts'),
        "## Licences and attribution",
        "",
        "Each photo keeps its author's licence (the `License` column of ATTRIBUTION.csv):",
        "",
        "| licence | photos | what it requires |",
        "|---|---|---|",
        *(f"| {_cell(lic['name'])} | {lic['photos']} | {_cell('; '.join(lic['requires']))} |" for lic in licences),
        "",
        "`ATTRIBUTION.csv` has, per photo, its title, author, author's profile, original page and licence: "
        "credit each author as their licence asks. Share-alike photos make adaptations that contain them "
        f"share-alike too. The annotations are {meta['license']['annotations']}.",
        "",
        *_params_and_code(meta),
    ]
    return "\n".join(lines)


def model_readme(name: str, meta: dict) -> str:
    """The model's README.md: what it is, what it was trained on, its metrics, how to load it."""
    dataset, model = meta["dataset"], meta["model"]
    lines = [
        f"# {name}",
        "",
        f"A {model['arch']} image classifier of {', '.join(model['labels'])} ({model['img_size']} px), trained "
        f"and evaluated on the dataset package `{dataset['name']}` at top hash `{dataset['top_hash']}`.",
        "",
        "- `model.pt`: a plain dict of tensors and values (never a pickled module); load it with "
        "`torch.load(path, weights_only=True)` or `pipeline.core.learn.models.load_checkpoint(path)`.",
        "- `metrics/train.json`, `metrics/eval.json`: training summary; top-k accuracy, per-class "
        "precision/recall/F1 on the test split.",
        "- `dvclive/`: per-epoch losses and validation accuracy (dvclive's layout); `plots/confusion.csv`: one "
        "row per test image (actual, predicted).",
        "",
    ]
    if meta["metrics"]:
        lines += ["## Metrics (test split)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4g} |" for key, value in sorted(meta["metrics"].items())]
        lines.append("")
    lines += [
        *_how_to_pull(name, 'pkg["metrics/eval.json"]()  # json and csv entries: dicts, DataFrames'),
        "## Licence",
        "",
        f"Trained on photos under their authors' licences: see the dataset package `{dataset['name']}` "
        "(README and ATTRIBUTION.csv) for the licences and the credits they ask for.",
        "",
        *_params_and_code(meta),
    ]
    return "\n".join(lines)


def _params_and_code(meta: dict) -> list[str]:
    """The README's last section: the params that made the package, and the code version."""
    return ["## Params", "", "```yaml", yaml.safe_dump(meta["params"], sort_keys=False).rstrip(), "```", "",
            _code(meta), ""]
