"""The dataset package's cost against its bytes, old layout (an entry per crop) and new (shards), in one run.

    git archive <commit before the change> pipeline | tar -x -C bench/out/old-code
    nice -n 10 python bench/package_bench.py --workspace WS --old-code bench/out/old-code --scales 1 10

``WS`` is a workspace where every stage up to shards has run (``data/splits``, ``data/shards``, the
manifests). For each scale ``k`` the bench makes a workspace of ``k`` times its crops under ``--out``:
scale 1 copies them; scale ``k`` writes each crop ``k`` times, copy ``r > 0`` under a new ImageID
(``md5("r/ImageID")[:16]``) with ``replica r`` appended to its JPEG bytes (after the end-of-image marker:
the same picture, distinct bytes, so no two objects are shared), every table's rows repeated with the new
ImageIDs, and the shards written again from those folders by the shards stage's own writer. Nothing of that
preparation is timed, and a later run re-uses it (``prepared.json``). Then each step runs as its own process (wall s and CPU s from ``wait4``, as
``scale_bench.py`` measures them):

- ``read, old inputs`` / ``read, new inputs``: every byte the package carries, read once (the yardstick):
  old, the class folders and the shards and the manifests; new, the shards, the two split tables and the
  manifests;
- ``package, old``: the package stage of ``--old-code`` (a copy of ``pipeline/`` before the change), into a
  fresh local registry; ``package, new``: this checkout's, into another;
- up to ``--pull-upto`` crops, ``pull, old`` (its install), ``pull, new`` (install and unpack into class
  folders) and ``pull --shards-only`` (the install alone), each into a new folder.

Prints one row per step and scale, and the ratios package / read; writes ``package.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

from scale_bench import READ_ONCE, run_step  # noqa: E402

from pipeline.core.base.params import ShardsParams  # noqa: E402
from pipeline.stages.shards.stage import write_shards  # noqa: E402

NAME = "bench/package"
MANIFESTS = ("data/selected.parquet", "data/images/manifest.parquet", "data/clean/manifest.parquet",
             "data/audit/ledger.parquet")
OLD_INPUTS = ("data/splits", "data/shards", *MANIFESTS)
NEW_INPUTS = ("data/shards", "data/splits/splits.parquet", "data/splits/labels.json", *MANIFESTS)


def new_id(replica: int, image_id: str) -> str:
    return image_id if replica == 0 else hashlib.md5(f"{replica}/{image_id}".encode()).hexdigest()[:16]


def replicate_table(table: pd.DataFrame, scale: int, columns: tuple[str, ...] = ("ImageID",)) -> pd.DataFrame:
    """``table`` ``scale`` times, copy ``r``'s ImageIDs (and ``columns``) renamed as :func:`new_id` does."""
    copies = []
    for replica in range(scale):
        copy = table.copy()
        for column in columns:
            if column in copy.columns:
                copy[column] = [new_id(replica, str(v)) for v in copy[column]]
        copies.append(copy)
    return pd.concat(copies, ignore_index=True)


def make_workspace(source: Path, ws: Path, scale: int) -> int:
    """``source``'s package inputs, ``scale`` times (module docstring) in the new folder ``ws``; returns crops."""
    ws.mkdir(parents=True)
    params = yaml.safe_load((source / "params.yaml").read_text())
    params.setdefault("package", {}).update(name=NAME, registry="")
    (ws / "params.yaml").write_text(yaml.safe_dump(params))
    splits = pd.read_parquet(source / "data/splits/splits.parquet")
    (ws / "data/splits").mkdir(parents=True)
    shutil.copy(source / "data/splits/labels.json", ws / "data/splits/labels.json")
    rows = []
    for replica in range(scale):
        for row in splits.itertuples(index=False):
            image_id = new_id(replica, row.ImageID)
            path = row.path.rsplit("/", 1)
            path = f"{path[0]}/{path[1].replace(row.ImageID, image_id, 1)}"
            data = (source / "data/splits" / row.path).read_bytes()
            target = ws / "data/splits" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data + (f"replica {replica}".encode() if replica else b""))
            rows.append({**row._asdict(), "ImageID": image_id, "path": path, "group": new_id(replica, row.group)})
    pd.DataFrame(rows, columns=splits.columns).to_parquet(ws / "data/splits/splits.parquet", index=False)
    for rel in MANIFESTS:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        replicate_table(pd.read_parquet(source / rel), scale).to_parquet(ws / rel, index=False)
    (ws / "data/shards").mkdir()
    if scale == 1:
        for tar in (source / "data/shards").iterdir():
            shutil.copy(tar, ws / "data/shards" / tar.name)
    else:
        write_shards(ws / "data/splits", ws / "data/shards", ShardsParams(**params.get("shards", {})))
    return len(rows)


def set_registry(ws: Path, registry: Path) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["package"]["registry"] = str(registry)
    (ws / "params.yaml").write_text(yaml.safe_dump(params))


def steps(ws: Path, old_code: Path, crops: int, pull_upto: int) -> list[tuple[str, list[str], str]]:
    """(name, argv, PYTHONPATH) of every step at one scale, in the order they run."""
    py = sys.executable
    listed = [("read, old inputs", [py, "-c", READ_ONCE, *OLD_INPUTS], str(REPO)),
              ("read, new inputs", [py, "-c", READ_ONCE, *NEW_INPUTS], str(REPO)),
              ("package, old", [py, "-m", "pipeline.stages.package"], str(old_code)),
              ("package, new", [py, "-m", "pipeline.stages.package"], str(REPO))]
    if crops <= pull_upto:
        listed += [("pull, old", [py, "-m", "pipeline.pull", NAME, "--registry", str(ws / "reg-old"), "--dest",
                                  str(ws / "pulled-old")], str(old_code)),
                   ("pull, new", [py, "-m", "pipeline.pull", NAME, "--registry", str(ws / "reg-new"), "--dest",
                                  str(ws / "pulled-new")], str(REPO)),
                   ("pull --shards-only", [py, "-m", "pipeline.pull", NAME, "--registry", str(ws / "reg-new"),
                                           "--dest", str(ws / "pulled-shards"), "--shards-only"], str(REPO))]
    return listed


def prepared_workspace(source: Path, out: Path, scale: int) -> tuple[Path, int]:
    """The workspace of ``scale`` under ``out`` and its crops: made, or one a previous run made (its registries
    and pulled folders removed), since making 100k crops takes minutes."""
    ws = out / f"x{scale}"
    marker = ws / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text())["source"] == str(source):
        for leftover in (*ws.glob("reg-*"), *ws.glob("pulled-*")):
            shutil.rmtree(leftover)
        return ws, json.loads(marker.read_text())["crops"]
    if ws.exists():
        shutil.rmtree(ws)
    crops = make_workspace(source, ws, scale)
    marker.write_text(json.dumps({"source": str(source), "crops": crops}))
    return ws, crops


def bench_scale(source: Path, out: Path, old_code: Path, scale: int, pull_upto: int) -> list[dict]:
    ws, crops = prepared_workspace(source, out, scale)
    rows = []
    for name, argv, pythonpath in steps(ws, old_code, crops, pull_upto):
        if name.startswith("package"):
            set_registry(ws, ws / ("reg-old" if name.endswith("old") else "reg-new"))
        env = {**os.environ, "PYTHONPATH": pythonpath, "QUILT_DISABLE_USAGE_METRICS": "true"}
        rc, wall, cpu, rss, written = run_step(argv, ws, env, out / f"x{scale}.log", timeout=3600)
        rows.append({"crops": crops, "step": name, "rc": rc, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                     "peak_rss_mib": round(rss), "written_mib": round(written, 1)})
        print(f"{crops:>7} {name:<18} rc={rc} wall {wall:7.2f} s  cpu {cpu:7.2f} s  rss {rss:5.0f} MiB  "
              f"written {written:7.1f} MiB", flush=True)
    by = {row["step"]: row for row in rows}
    for layout in ("old", "new"):
        package, read = by[f"package, {layout}"], by[f"read, {layout} inputs"]
        print(f"{crops:>7} {layout}: package / read once = {package['wall_s'] / read['wall_s']:.1f}x wall, "
              f"{package['cpu_s'] / read['cpu_s']:.1f}x CPU; entries: {entries(ws / f'reg-{layout}')}")
    return rows


def entries(registry: Path) -> int:
    """Files in the registry's one version of NAME (its manifest's lines after the first)."""
    latest = (registry / ".quilt/named_packages" / NAME / "latest")
    if not latest.is_file():
        return -1
    return len((registry / ".quilt/packages" / latest.read_text().strip()).read_text().splitlines()) - 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="a workspace where the stages up to shards ran")
    parser.add_argument("--old-code", type=Path, required=True, help="a folder holding pipeline/ before the change")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--pull-upto", type=int, default=20000, help="time the pulls up to this many crops")
    parser.add_argument("--out", type=Path, default=REPO / "bench/out/package")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for scale in args.scales:
        rows += bench_scale(args.workspace.resolve(), args.out.resolve(), args.old_code.resolve(), scale,
                            args.pull_upto)
        (args.out / "package.json").write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
