"""Side-by-side benchmark: selecting Hamburger + Sandwich boxes from full-size Open Images metadata.

Every contender runs as its own process on the files written by ``bench/gen_openimages.py`` (a V6 train
box CSV of 14,610,229 rows / 2.3 GB and an image table of 1,743,042 rows / 635 MB):

- ``read``:   reading both files' bytes (the floor for anything that parses the CSVs)
- ``pandas``: (a) the naive way: ``pandas.read_csv`` of both files, ``isin``, merge
- ``polars``: (b) ``polars.scan_csv`` of both, lazy filter + join
- ``duckdb``: (c) duckdb SQL over the CSVs
- ``convert``: (d) ``python -m pipeline.stages.metadata``: our one-time conversion to the Parquet cache
- ``select``: (e) ``python -m pipeline.stages.select``: our selection from that cache

All contenders compute the same answer (the boxes of Hamburger, Sandwich and Submarine sandwich, the
subclass our select includes, without group-of or depiction boxes, joined to their image rows) and
print its row count, which the table shows so the answers can be compared.

For each run: wall time; peak RSS of the process (``os.wait4``'s rusage, which also counts waited-for
children); its CPU time; and the CPU time *other* processes used meanwhile (system-wide busy time from
psutil minus this run's and this script's own), because the machine may be shared and a 2-core box
shows every neighbour in the numbers.

Usage: ``python bench/metadata_bench.py [--ws bench/out/ws] [--only pandas,select] [--repeat 1]``;
results also go to ``<ws>/../metadata_bench.json``, each run's output to ``<ws>/../<contender>.log``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
BOXES = "data/metadata/raw/v6/oidv6-train-annotations-bbox.csv"
IMAGES = "data/metadata/raw/2018_04/train/train-images-boxable-with-rotation.csv"
MIDS = ["/m/0cdn1", "/m/0l515", "/m/06pcq"]  # Hamburger, Sandwich and its subclass Submarine sandwich
IMAGE_COLUMNS = ["ImageID", "OriginalURL", "OriginalLandingURL", "License", "AuthorProfileURL", "Author", "Title",
                 "OriginalSize", "OriginalMD5", "Rotation"]

# Each contender is a small program run with ``python -c`` in the workspace; it prints the row count.
PROGRAMS = {
    "read": f"""
n = 0
for path in ({BOXES!r}, {IMAGES!r}):
    with open(path, 'rb', buffering=0) as fh:
        while chunk := fh.read(1 << 24):
            n += len(chunk)
print(n)
""",
    "pandas": f"""
import pandas as pd
boxes = pd.read_csv({BOXES!r})
images = pd.read_csv({IMAGES!r})
chosen = boxes[boxes.LabelName.isin({MIDS!r}) & (boxes.IsGroupOf != 1) & (boxes.IsDepiction != 1)]
print(len(chosen.merge(images[{IMAGE_COLUMNS!r}], on='ImageID', how='left')))
""",
    "polars": f"""
import polars as pl
boxes = pl.scan_csv({BOXES!r}).filter(
    pl.col('LabelName').is_in({MIDS!r}) & (pl.col('IsGroupOf') != 1) & (pl.col('IsDepiction') != 1))
images = pl.scan_csv({IMAGES!r}).select({IMAGE_COLUMNS!r})
print(boxes.join(images, on='ImageID', how='left').collect().height)
""",
    "duckdb": f"""
import duckdb
mids = ", ".join("'" + m + "'" for m in {MIDS!r})
image_columns = ", ".join("i." + c for c in {IMAGE_COLUMNS[1:]!r})
print(duckdb.sql(f'''
    SELECT b.*, {{image_columns}} FROM read_csv('{BOXES}') b LEFT JOIN read_csv('{IMAGES}') i USING (ImageID)
    WHERE b.LabelName IN ({{mids}}) AND b.IsGroupOf != 1 AND b.IsDepiction != 1
''').to_arrow_table().num_rows)
""",
}
LABELS = {"read": "read bytes", "pandas": "(a) pandas", "polars": "(b) polars", "duckdb": "(c) duckdb",
          "convert": "(d) our conversion", "select": "(e) our select"}


def command(name: str) -> list[str]:
    if name == "convert":
        return [sys.executable, "-m", "pipeline.stages.metadata"]
    if name == "select":
        return [sys.executable, "-m", "pipeline.stages.select"]
    return [sys.executable, "-c", PROGRAMS[name]]


def _busy(times: psutil._common.scputimes) -> float:  # type: ignore[name-defined]
    return sum(getattr(times, f) for f in ("user", "system", "nice", "irq", "softirq", "steal") if hasattr(times, f))


def measure(name: str, ws: Path) -> dict:
    """Run one contender to completion; return its wall time, peak RSS, CPU and the others' CPU."""
    if name == "convert":  # force a full conversion: forget the stamps and the outputs
        for path in ("data/metadata/cache.json", "data/metadata/images.parquet"):
            (ws / path).unlink(missing_ok=True)
        shutil.rmtree(ws / "data/metadata/boxes", ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = ws.parent / f"{name}.log"
    own_before = psutil.Process().cpu_times()
    system_before = _busy(psutil.cpu_times())
    started = time.perf_counter()
    with log.open("w") as out:  # not a pipe: Popen must not reap the child, os.wait4 does (for its rusage)
        proc = subprocess.Popen(command(name), cwd=ws, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    system_cpu = _busy(psutil.cpu_times()) - system_before
    own = psutil.Process().cpu_times()
    own_cpu = (own.user - own_before.user) + (own.system - own_before.system)
    child_cpu = usage.ru_utime + usage.ru_stime
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{text[-2000:]}")
    others = max(0.0, system_cpu - child_cpu - own_cpu)
    return {
        "name": name, "wall_s": round(wall, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "cpu_s": round(child_cpu, 2), "other_cpu_s": round(others, 2),
        "other_cpu_pct_of_machine": round(100 * others / (wall * psutil.cpu_count()), 1),
        "output": summary(name, ws, text),
    }


def summary(name: str, ws: Path, text: str) -> str:
    """What the run produced, to compare answers: the row count (our stages: from their output)."""
    if name == "select":
        import pyarrow.parquet as pq

        return f"{pq.ParquetFile(ws / 'data/selected.parquet').metadata.num_rows} rows"
    if name == "convert":
        found = re.search(r"boxes: ([\d,]+) boxes in (\d+) label partitions", text)
        return f"{found[1]} boxes, {found[2]} partitions" if found else ""
    lines = text.strip().splitlines()
    return f"{lines[-1]} {'bytes' if name == 'read' else 'rows'}" if lines else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ws", type=Path, default=REPO / "bench" / "out" / "ws",
                        help="the workspace gen_openimages.py wrote (with params.yaml)")
    parser.add_argument("--only", default="read,pandas,polars,duckdb,convert,select",
                        help="comma-separated contenders, in order")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    ws = args.ws.resolve()
    for rel in (BOXES, IMAGES):
        if not (ws / rel).exists():
            sys.exit(f"{ws / rel} missing: run python bench/gen_openimages.py --out {args.ws} first")
    print(f"{psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; boxes "
          f"{(ws / BOXES).stat().st_size / 1e9:.2f} GB, images {(ws / IMAGES).stat().st_size / 1e9:.2f} GB", flush=True)
    print(f"{'contender':20} {'wall s':>7} {'peak RSS MiB':>12} {'CPU s':>6} {'other CPU s':>11} {'other %':>8}  output",
          flush=True)
    results = []
    for _ in range(args.repeat):
        for name in args.only.split(","):
            r = measure(name, ws)
            results.append(r)
            print(f"{LABELS[name]:20} {r['wall_s']:7.2f} {r['peak_rss_mib']:12,} {r['cpu_s']:6.2f} "
                  f"{r['other_cpu_s']:11.2f} {r['other_cpu_pct_of_machine']:7.1f}%  {r['output'][:60]}", flush=True)
    out = ws.parent / "metadata_bench.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
