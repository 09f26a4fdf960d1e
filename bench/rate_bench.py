"""The shared request rate, measured where it matters: arrival times at the server, side by side in one run.

    python bench/rate_bench.py                      # download.rate 20/s, 2 processes and 1, five runs each

Runs the real download stage (``python -m pipeline.stages.download``, a separate process tree) against the
local mirror, which logs when each request arrived (its own thread, in this otherwise idle process). For each
run: requests, the most arrivals in any 1-second window (the limit is rate + 1: a closed window holds both
ends), the achieved rate between the first and last arrival, and the smallest gap between two arrivals.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.io import write_parquet  # noqa: E402
from pipeline.core.sources import layout  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402
from pipeline.mirror.log import max_in_window  # noqa: E402


def selection(mirror: Mirror) -> pd.DataFrame:
    tables = [pd.read_csv(f"{mirror.base_url}/{p}", dtype={"ImageID": str}) for p in layout("v6").images.values()]
    images = pd.concat(tables, ignore_index=True)
    return images[images["ImageID"].isin(mirror.truth["ImageID"])].assign(Label="Hamburger")


def run(mirror: Mirror, selected: pd.DataFrame, args: argparse.Namespace, processes: int) -> dict:
    with tempfile.TemporaryDirectory(dir=args.out) as folder:
        write_parquet(selected, Path(folder) / "data" / "selected.parquet")
        params = {**{k: v for k, v in mirror.params_overrides().items() if k != "labels"}}
        (Path(folder) / "params.yaml").write_text(yaml.safe_dump({
            "source": {"base_url": params["source.base_url"], "cvdf_url": params["source.cvdf_url"]},
            "download": {"rate": args.rate},
            "runtime": {"download_processes": processes, "connections": args.connections,
                        "shard_size": args.shard_size}}))
        mirror.clear_requests()
        done = subprocess.run([sys.executable, "-m", "pipeline.stages.download"], cwd=folder, capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        if done.returncode:
            raise SystemExit(done.stderr)
    arrivals = sorted(r.t for r in mirror.requests if r.path.startswith("/flickr/"))
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"processes": processes, "requests": len(arrivals), "max_window": max_in_window(arrivals),
            "rate": (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), "min_gap_ms": 1e3 * min(gaps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0, help="download.rate (default 20)")
    parser.add_argument("--processes", type=int, nargs="+", default=[2, 1], help="runtime.download_processes to compare")
    parser.add_argument("--runs", type=int, default=5, help="runs of each, interleaved (default 5)")
    parser.add_argument("--images-per-label", type=int, default=60, help="mirror size: 2 labels (default 60)")
    parser.add_argument("--connections", type=int, default=16, help="runtime.connections (default 16)")
    parser.add_argument("--shard-size", type=int, default=10, help="runtime.shard_size (default 10: many shards)")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "rate"))
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with Mirror(root=Path(args.out) / "mirror", labels=("Hamburger", "Sandwich"), images_per_label=args.images_per_label,
                faults=False, seed=0) as mirror:
        selected = selection(mirror)
        rows = []
        for round_ in range(1, args.runs + 1):
            for processes in args.processes:
                row = {"run": round_, **run(mirror, selected, args, processes)}
                rows.append(row)
                print(f"run {round_}, {processes} process(es): {row['requests']} requests, at most "
                      f"{row['max_window']} in any second, {row['rate']:.2f}/s", flush=True)
    shutil.rmtree(Path(args.out) / "mirror", ignore_errors=True)
    print(f"\ndownload.rate {args.rate:g}/s, limit per 1-s window {args.rate + 1:g}, load average "
          f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs\n")
    print("| run | processes | requests | most in any 1 s | achieved /s | smallest gap ms |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['processes']} | {r['requests']} | {r['max_window']} | {r['rate']:.2f} | "
              f"{r['min_gap_ms']:.1f} |")


if __name__ == "__main__":
    main()
