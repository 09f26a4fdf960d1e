"""What DVC's no-op commands cost for one output laid out as N small files, or as the same bytes in tars.

    nice -n 10 python bench/dvc_layout_bench.py                  # 100,000 files of 4 KiB, tars of 1,000
    python bench/dvc_layout_bench.py --files 20000 --per-tar 1000 --out bench/out/dvc-layout

The scale benchmark found DVC's no-op ``dvc status`` and ``dvc repro`` costing ~0.3 CPU ms per tracked file
whatever the bytes (docs/architecture.md, "Cost as the work grows"); DVC's maintainers advise tracking an
archive instead of a folder of very many files. This measures that advice on its own, side by side in one
run: a DVC repository (no git) with two stages whose outputs hold the same bytes, ``files`` (a folder of
``--files`` files) and ``tars`` (those files in tars of ``--per-tar``, as the shards stage writes them),
committed once with ``dvc commit -f``, then a no-op ``dvc status <stage>`` and ``dvc repro <stage>`` each.
Per step: wall seconds and CPU seconds (user + system of DVC and its children).
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

DVC_YAML = """stages:
  files:
    cmd: {python} -c "print('files')"
    outs: [data/files]
  tars:
    cmd: {python} -c "print('tars')"
    outs: [data/tars]
"""


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
    args = parser.parse_args(argv)
    dvc = [sys.executable, "-m", "dvc"]
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    make_files(args.out / "data" / "files", args.files, args.size)
    tars = make_tars(args.out / "data" / "files", args.out / "data" / "tars", args.per_tar)
    (args.out / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=args.out, check=True)
    os.environ["DVC_NO_ANALYTICS"] = "1"
    print(f"{args.files} files of {args.size} B; the same bytes in {tars} tars of {args.per_tar}")
    print(f"{'step':<24} {'layout':<7} {'wall s':>8} {'CPU s':>8} {'CPU ms/file':>12}")
    for stage in ("files", "tars"):
        for step, command in (("dvc commit -f", ["commit", "-f", "-q", stage]),
                              ("dvc status (no-op)", ["status", "-q", stage]),
                              ("dvc repro (no-op)", ["repro", "-q", stage])):
            wall, cpu = timed([*dvc, *command], args.out)
            print(f"{step:<24} {stage:<7} {wall:>8.2f} {cpu:>8.2f} {1000 * cpu / args.files:>12.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
