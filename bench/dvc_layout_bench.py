"""What DVC's no-op commands cost for one output laid out as N small files, or as the same bytes in tars;
and for this pipeline's own graph of stages at N photos, with its data deps as they were and as they are.

    nice -n 10 python bench/dvc_layout_bench.py                  # 100,000 files of 4 KiB, tars of 1,000
    nice -n 10 python bench/dvc_layout_bench.py --pipeline       # the pipeline's graph at 100,000 photos
    python bench/dvc_layout_bench.py --files 20000 --per-tar 1000 --out bench/out/dvc-layout

The scale benchmark found DVC's no-op ``dvc status`` and ``dvc repro`` costing ~0.3 CPU ms per tracked file
whatever the bytes (docs/architecture.md, "Cost as the work grows"); DVC's maintainers advise tracking an
archive instead of a folder of very many files. This measures that advice on its own, side by side in one
run: a DVC repository (no git) with two stages whose outputs hold the same bytes, ``files`` (a folder of
``--files`` files) and ``tars`` (those files in tars of ``--per-tar``, as the shards stage writes them),
committed once with ``dvc commit -f``, then a no-op ``dvc status <stage>`` and ``dvc repro <stage>`` each.
Per step: wall seconds and CPU seconds (user + system of DVC and its children).

``--pipeline``: the repository's ``dvc.yaml`` with its code deps, params and commands taken out (every
command is a no-op), over a workspace of stand-in files at ``--files`` photos: one file per photo in
``data/images``, 1.17 per photo (the crops per photo of the scale benchmark) in ``data/crops`` and
``data/embeddings``, the class folders of ``data/splits`` as hard links to the crops, one tar per 1,000 crops;
a small file for everything else. Timed twice: with the data deps the pipeline had before they named
manifests instead of folders (:data:`OLD_FOLDER_DEPS`, and ``data/embeddings`` as an output), and as they are.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.base.locks import file_lock  # noqa: E402

DVC_YAML = """stages:
  files:
    cmd: {python} -c "print('files')"
    outs: [data/files]
  tars:
    cmd: {python} -c "print('tars')"
    outs: [data/tars]
"""


#: the folder deps each stage named before its readers named manifests (docs/architecture.md, "Cost as the
#: work grows"); the graph "as it was" is today's plus these, and the embeddings cache as an output
OLD_FOLDER_DEPS = {"crop": ["data/images"], "audit": ["data/crops"], "split": ["data/crops", "data/images"],
                   "shards": ["data/splits"], "train": ["data/splits"], "evaluate": ["data/splits"],
                   "package": ["data/splits"]}
EMBEDDINGS = {"data/embeddings": {"persist": True, "cache": False}}
CROPS_PER_PHOTO = 1.17


def _name(entry: object) -> str:
    return next(iter(entry)) if isinstance(entry, dict) else str(entry)


def pipeline_graph(old: bool) -> dict:
    """The repository's stages with only their data deps and outputs, every command a no-op."""
    import yaml

    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    stages = {}
    for name, stage in spec.items():
        deps = [d for d in stage.get("deps", []) if not d.startswith("pipeline/")]
        outs = [o for o in stage.get("outs", []) if _name(o) != "data/embeddings"]
        if old:
            deps += OLD_FOLDER_DEPS.get(name, [])
            outs += [EMBEDDINGS] if name == "audit" else []
        outs += [{_name(o): {"cache": False}} for o in [*stage.get("metrics", []), *stage.get("plots", [])]]
        stages[name] = {"cmd": f"{sys.executable} -c pass", "deps": deps, "outs": outs}
    return {"stages": stages}


def make_workspace(root: Path, photos: int) -> None:
    """Stand-in files for every path the two graphs name (the module's docstring says which)."""
    crops = round(photos * CROPS_PER_PHOTO)
    make_files(root / "data/images", photos, 1024)
    make_files(root / "data/crops", crops, 1024)
    make_files(root / "data/embeddings", crops, 1024)
    for index, crop in enumerate(sorted((root / "data/crops").rglob("*.jpg"))):
        split = ("train", "train", "train", "train", "train", "val", "test")[index % 7]
        target = root / "data/splits" / split / f"label{index % 2}" / crop.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(crop, target)
    (root / "data/shards").mkdir(parents=True)
    for index in range(0, crops, 1000):
        (root / "data/shards" / f"train-{index // 1000:06d}.tar").write_bytes(index.to_bytes(8, "big") * 128)
    for graph in (pipeline_graph(False), pipeline_graph(True)):
        for stage in graph["stages"].values():
            for path in [*stage["deps"], *map(_name, stage["outs"])]:
                target = root / path
                if target.exists():
                    continue
                if not target.suffix:  # a folder: one file in it
                    target.mkdir(parents=True)
                    target = target / "part.bin"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(path.encode())


def bench_pipeline(args: argparse.Namespace, dvc: list[str]) -> None:
    import yaml

    make_workspace(args.out, args.files)
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=args.out, check=True)
    print(f"the pipeline's graph at {args.files} photos ({round(args.files * CROPS_PER_PHOTO)} crops)")
    print(f"{'step':<24} {'data deps':<9} {'wall s':>8} {'CPU s':>8} {'CPU ms/photo':>13}")
    for label, old in (("as were", True), ("as are", False)):
        (args.out / "dvc.yaml").write_text(yaml.safe_dump(pipeline_graph(old), sort_keys=False))
        for step, command in (("dvc commit -f", ["commit", "-f", "-q"]), ("dvc status (no-op)", ["status", "-q"]),
                              ("dvc status (again)", ["status", "-q"]), ("dvc repro (no-op)", ["repro", "-q"])):
            wall, cpu = timed([*dvc, *command], args.out)
            print(f"{step:<24} {label:<9} {wall:>8.2f} {cpu:>8.2f} {1000 * cpu / args.files:>13.4f}", flush=True)


def make_files(folder: Path, count: int, size: int) -> None:
    """``count`` distinct files of ``size`` bytes in 256 sub-folders (as the crop store spreads them)."""
    for index in range(count):
        sub = folder / f"{index % 256:02x}"
        sub.mkdir(parents=True, exist_ok=True)
        body = index.to_bytes(8, "big") * (size // 8)
        (sub / f"{index:08d}.jpg").write_bytes(body)


def make_tars(files: Path, folder: Path, per_tar: int) -> int:
    """The files of ``files`` in tars of ``per_tar`` members, sorted by path; returns how many tars."""
    folder.mkdir(parents=True, exist_ok=True)
    members = sorted(p for p in files.rglob("*") if p.is_file())
    tars = 0
    for start in range(0, len(members), per_tar):
        with tarfile.open(folder / f"part-{tars:06d}.tar", "w") as tar:
            for path in members[start:start + per_tar]:
                tar.add(path, arcname=path.relative_to(files).as_posix())
        tars += 1
    return tars


def timed(argv: list[str], cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one command, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="files in the folder layout")
    parser.add_argument("--size", type=int, default=4096, help="bytes per file")
    parser.add_argument("--per-tar", type=int, default=1000, help="files per tar in the tar layout")
    parser.add_argument("--out", type=Path, default=Path("bench/out/dvc-layout"), help="scratch folder (replaced)")
    parser.add_argument("--pipeline", action="store_true", help="time the pipeline's own graph of stages instead")
    args = parser.parse_args(argv)
    # --out is replaced: a second run with the same --out waits instead of deleting the first one's folder
    with file_lock(args.out.parent / f".{args.out.name}.lock", f"another run with --out {args.out}"):
        run(args)
    return 0


def run(args: argparse.Namespace) -> None:
    """Build the scratch folder anew and print the timings of one layout comparison or of the pipeline graph."""
    dvc = [sys.executable, "-m", "dvc"]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    os.environ["DVC_NO_ANALYTICS"] = "1"
    if args.pipeline:
        bench_pipeline(args, dvc)
        return
    make_files(args.out / "data" / "files", args.files, args.size)
    tars = make_tars(args.out / "data" / "files", args.out / "data" / "tars", args.per_tar)
    (args.out / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=args.out, check=True)
    print(f"{args.files} files of {args.size} B; the same bytes in {tars} tars of {args.per_tar}")
    print(f"{'step':<24} {'layout':<7} {'wall s':>8} {'CPU s':>8} {'CPU ms/file':>12}")
    for stage in ("files", "tars"):
        for step, command in (("dvc commit -f", ["commit", "-f", "-q", stage]),
                              ("dvc status (no-op)", ["status", "-q", stage]),
                              ("dvc repro (no-op)", ["repro", "-q", stage])):
            wall, cpu = timed([*dvc, *command], args.out)
            print(f"{step:<24} {stage:<7} {wall:>8.2f} {cpu:>8.2f} {1000 * cpu / args.files:>12.4f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
