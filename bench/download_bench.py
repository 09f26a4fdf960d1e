"""Download throughput, side by side in one run, against the local mirror as a separate process.

    python bench/download_bench.py                       # 2,000 images of ~180 KB, 50 ms latency, rate off

Contenders, each run as its own process tree so its CPU can be counted:
  (a) the original project's way: one ``requests.get`` after another (on a subset: it is slow)
  (b) img2dataset 1.47 (``--output_format files --resize_mode no``), with and without
      ``--disable_all_reencoding True``, from its own venv (``--img2dataset``)
  (c) ours: ``python -m pipeline.stages.download`` with the rate limit off, ``--processes`` shard processes

For each: images/s, CPU seconds of the client's process tree (getrusage of waited-for children), CPU
seconds of the mirror process, and CPU seconds used by everything else on the machine meanwhile (system
busy time minus the two), because other people share this machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from measure import busy_cpu_seconds, waited_children_cpu_seconds  # noqa: E402

from pipeline.core.base.io import write_parquet  # noqa: E402
from pipeline.core.net.sources import layout  # noqa: E402


@dataclass
class Result:
    name: str
    images: int  # asked for
    got: int  # files written that are complete
    wall: float
    client_cpu: float
    mirror_cpu: float
    other_cpu: float
    round: int = 1

    @property
    def rate(self) -> float:
        return self.got / self.wall


def measure(name: str, images: int, cmd: list[str], mirror: psutil.Process, count, cwd: Path | None = None,
            env: dict | None = None) -> Result:
    """Run ``cmd`` to completion and account its wall time and CPU; ``count()`` says how many images it got."""
    mirror_before, busy_before, kids_before = sum(mirror.cpu_times()[:2]), busy_cpu_seconds(), waited_children_cpu_seconds()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    client = waited_children_cpu_seconds() - kids_before
    mirror_cpu = sum(mirror.cpu_times()[:2]) - mirror_before
    other = busy_cpu_seconds() - busy_before - client - mirror_cpu
    if done.returncode != 0:
        print(f"{name}: exit code {done.returncode}\n{done.stderr[-2000:]}", file=sys.stderr)
    return Result(name, images, count(), wall, client, mirror_cpu, max(0.0, other))


def start_mirror(args: argparse.Namespace) -> tuple[subprocess.Popen, dict]:
    per_label = (args.images + 1) // 2
    root = Path(args.cache) / f"mirror-{args.size}-{per_label}"
    cmd = [sys.executable, "-m", "pipeline.mirror", "--root", str(root), "--images-per-label", str(per_label),
           "--size", args.size, "--no-faults", "--latency", str(args.latency)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the last line it prints is JSON with its URLs
        if line.startswith("{"):
            return proc, json.loads(line)
    raise SystemExit(f"mirror did not start (exit code {proc.wait()})")


def image_table(info: dict, n: int) -> pd.DataFrame:
    """The first ``n`` images of the mirror's image tables (what select would hand the download stage)."""
    truth = pd.read_parquet(info["truth"])
    tables = [pd.read_csv(f"{info['base_url']}/{p}", dtype={"ImageID": str}) for p in layout("v6").images.values()]
    images = pd.concat(tables, ignore_index=True)
    return images[images["ImageID"].isin(truth["ImageID"])].sort_values("ImageID").head(n).reset_index(drop=True)


def complete_files(folder: Path, sizes: set[int]) -> int:
    """Files in ``folder`` (recursively) whose size is one of the originals' sizes (not a partial body)."""
    return sum(1 for p in folder.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png") and p.stat().st_size in sizes)


def sequential(url_file: str, out: str) -> None:
    """(a) The original project's loop: ``requests.get`` then write, one image after another."""
    import requests

    for i, url in enumerate(Path(url_file).read_text().split()):
        response = requests.get(url, timeout=30)
        if response.status_code == 200:
            Path(out, f"{i:06d}.jpg").write_bytes(response.content)


@dataclass
class Contender:
    """How to run one contender in a fresh ``folder``: ``command(folder)``, ``ok(folder)`` counts its images."""

    name: str
    images: int
    command: Callable[[Path], list[str]]
    ok: Callable[[Path], int]
    env: dict | None = None
    in_folder: bool = False  # run with the folder as the working directory


def contenders(args: argparse.Namespace, table: pd.DataFrame, info: dict, out: Path) -> list[Contender]:
    urls = out / "urls.txt"
    urls.write_text("\n".join(table["OriginalURL"]) + "\n")
    sizes = set(table["OriginalSize"].astype(int))
    found = []
    if args.sequential_images:
        n = min(args.sequential_images, len(table))
        subset = out / "urls-a.txt"
        subset.write_text("\n".join(table["OriginalURL"].head(n)) + "\n")
        found.append(Contender(f"(a) requests.get, one after another ({n} images)", n,
                               lambda f: [sys.executable, __file__, "--sequential", str(subset), str(f)],
                               lambda f: complete_files(f, sizes)))
    if args.img2dataset:
        env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
        for label, extra in [("", []), (", --disable_all_reencoding True", ["--disable_all_reencoding", "True"])]:
            found.append(Contender(
                f"(b) img2dataset 1.47{label}", len(table),
                lambda f, extra=extra: [args.img2dataset, "--url_list", str(urls), "--input_format", "txt",
                                        "--output_folder", str(f / "i2d"), "--output_format", "files",
                                        "--resize_mode", "no", "--processes_count", str(args.img2dataset_processes),
                                        "--thread_count", str(args.img2dataset_threads), "--timeout", "30", *extra],
                lambda f: _img2dataset_successes(f / "i2d"), env))
    selected = out / "selected.parquet"
    write_parquet(table, selected)
    params = yaml.safe_dump({"source": {"base_url": info["base_url"], "cvdf_url": info["cvdf_url"], "images": "flickr"},
                             "download": {"rate": 0},
                             "runtime": {"connections": args.workers, "shard_size": 1000,
                                         "download_processes": args.processes}})

    def ours(folder: Path) -> list[str]:
        (folder / "params.yaml").write_text(params)
        (folder / "data").mkdir()
        shutil.copy(selected, folder / "data" / "selected.parquet")
        return [sys.executable, "-m", "pipeline.stages.download"]

    name = f"(c) ours, python -m pipeline.stages.download (workers {args.workers}, processes {args.processes})"
    found.append(Contender(name, len(table), ours,
                           _ours_ok, {**os.environ, "PYTHONPATH": str(REPO)}, in_folder=True))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--sequential-images", type=int, default=300,
                        help="images for (a); at ~18/s the full list would take minutes (0 = skip)")
    parser.add_argument("--size", default="1190x893", help="mirror image size; 1190x893 gives ~180 KB JPEGs")
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=64, help="our runtime.connections (per process)")
    parser.add_argument("--processes", type=int, default=2, help="our runtime.download_processes (sharing one rate)")
    parser.add_argument("--img2dataset", default=shutil.which("img2dataset") or "",
                        help="an img2dataset 1.47 executable, best in its own venv: python -m venv .i2d && "
                             ".i2d/bin/pip install img2dataset==1.47.0, then --img2dataset .i2d/bin/img2dataset "
                             "(default: the one on PATH; '' = skip)")
    parser.add_argument("--img2dataset-processes", type=int, default=1, help="its default; 2 was slower here")
    parser.add_argument("--img2dataset-threads", type=int, default=256, help="its default")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all contenders, interleaved")
    parser.add_argument("--cache", default=str(REPO / "bench" / "out" / "mirror-cache"),
                        help="where the mirror's images are kept between runs")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "download"))
    args = parser.parse_args()

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    mirror_proc, info = start_mirror(args)
    results: list[Result] = []
    try:
        table = image_table(info, args.images)
        print(f"{len(table)} images, mean {table['OriginalSize'].mean() / 1e3:.0f} KB, latency {args.latency * 1e3:.0f} ms, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
        field = contenders(args, table, info, out)
        for round_ in range(1, args.repeat + 1):
            for index, contender in enumerate(field):
                # a fresh folder per run, all deleted at the end: deleting thousands of files just before a
                # run makes the file system slower at creating new ones (ext4 skips recently freed inodes)
                folder = out / "runs" / f"{round_}-{index}"
                folder.mkdir(parents=True)
                cmd = contender.command(folder)
                os.sync()  # the previous contender's files reach the disk now, not during this one's run
                result = measure(contender.name, contender.images, cmd, psutil.Process(mirror_proc.pid),
                                 lambda: contender.ok(folder), cwd=folder if contender.in_folder else None,
                                 env=contender.env)
                result.round = round_
                results.append(result)
                print(f"round {round_}: {contender.name}: {result.rate:.0f} images/s", flush=True)
    finally:
        mirror_proc.terminate()
        mirror_proc.wait()
        shutil.rmtree(out / "runs", ignore_errors=True)
    report(results)


def _img2dataset_successes(folder: Path) -> int:
    return sum(json.loads(p.read_text()).get("successes", 0) for p in folder.glob("*_stats.json"))


def _ours_ok(folder: Path) -> int:
    manifest = pd.read_parquet(folder / "data" / "images" / "manifest.parquet")
    return int((manifest["status"] == "ok").sum())


def report(results: list[Result]) -> None:
    print("\n| round | contender | images | ok | wall s | images/s | client CPU s | CPU ms/image | mirror CPU s | other CPU s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.round} | {r.name} | {r.images} | {r.got} | {r.wall:.1f} | {r.rate:.0f} | {r.client_cpu:.1f} | "
              f"{1e3 * r.client_cpu / max(r.got, 1):.2f} | {r.mirror_cpu:.1f} | {r.other_cpu:.1f} |")
    names = list(dict.fromkeys(r.name for r in results))
    ours = names[-1]
    rates = {name: [r.rate for r in results if r.name == name] for name in names}
    print("\nmedian of rounds: " + "; ".join(f"{name.split(' (w')[0]} {statistics.median(v):.0f}/s" for name, v in rates.items()))
    for name in names[:-1]:
        ratios = [o / r for o, r in zip(rates[ours], rates[name])]  # ours against it in the same round
        print(f"ours / {name}: " + ", ".join(f"{x:.1f}x" for x in ratios) + f" (median {statistics.median(ratios):.1f}x)")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--sequential":
        sequential(sys.argv[2], sys.argv[3])
    else:
        main()
