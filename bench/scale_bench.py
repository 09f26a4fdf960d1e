"""Cost as the work grows: every stage, DVC and Quilt at N photos, per photo, so growth shows at a glance.

    nice -n 10 python bench/scale_bench.py                       # N = 1,000, 10,000 and 100,000
    python bench/scale_bench.py --sizes 1000 10000 --out bench/out/scale

For each N it serves a synthetic Open Images of about N selected photos from the project's mirror (160x120
pictures composed from a pool of pre-drawn backgrounds and objects: ``Mirror(pool=...)``, so 100k photos
take minutes to make, and re-used by later runs), makes a DVC workspace as the demo does (a git repository
with a copy of ``pipeline/``, the repository's ``dvc.yaml`` and a complete ``params.yaml``), and runs every
step as its own process:

- the stages, ``python -m pipeline.stages.<stage>``, metadata -> select -> download (rate off) -> crop ->
  clean -> audit -> split -> shards -> train (one epoch at 32 px) -> evaluate -> package (local registry);
- ``dvc commit -f``: DVC hashing every output, what ``dvc repro`` adds after running the stages;
- a no-op ``dvc repro`` and ``dvc status``;
- ``read package inputs``: every byte of the files the dataset package carries, read once (the yardstick
  of the package target);
- ``pull --list`` and ``pull`` of the dataset into a new folder.

Per step and N: wall seconds, CPU seconds (user + system of the step and the processes it waited for,
from ``wait4``) per photo, the peak RSS of its largest process, bytes written (the kernel's count of bytes
the step sent towards storage) and files added to the workspace. The machine is shared, so CPU seconds are
the figure to compare: load stretches wall time far more than CPU time.

Writes ``scale.csv``, ``scale.json`` and ``scale.png`` (CPU seconds per photo against N, one line per
step) into ``--out``, and prints the table. A step that fails ends that N (the next steps need its output);
the others still run. ``--last-stage clean`` runs the stages up to clean and DVC's steps on those stages only
(for a size whose later stages cannot finish in the time there is); ``--steps K`` the first K steps only;
``--resume-from audit --keep`` continues such a kept workspace from that stage with this checkout's code (with
``--last-stage``, up to that stage only).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipeline.core.base.locks import file_lock  # noqa: E402
from pipeline.core.base.params import load_params  # noqa: E402
from pipeline.demo import prepare_workspace  # noqa: E402
from pipeline.mirror import Mirror  # noqa: E402

LABELS = ("Hamburger", "Sandwich")
PICTURE = (160, 120)
#: the bench's settings on top of the defaults: everything that matters for cost at a small picture size
OVERRIDES: dict = {
    "labels": list(LABELS),
    "source.version": "v6",
    "source.images": "flickr",
    "select.limit_per_label": 0,
    "download.rate": 0.0,
    "crop.min_side": 16,
    "audit.img_size": 32,
    "split.min_per_label": 2,
    "train.epochs": 1,
    "train.freeze_epochs": 0,
    "train.img_size": 32,
    "train.batch_size": 128,
    "evaluate.worst": 16,
    "evaluate.gradcam": 4,
    "package.registry": "",
    "runtime.connections": 32,
    "runtime.retries": 3,
    "runtime.backoff": 0.2,
    "runtime.max_backoff": 2.0,
}
STAGES = ("metadata", "select", "download", "crop", "clean", "audit", "split", "shards", "train", "evaluate",
          "package")
#: what the dataset package carries, read once as the package target's yardstick (the crops as shards only)
PACKAGE_INPUTS = ("data/shards", "data/splits/splits.parquet", "data/splits/labels.json", "data/selected.parquet",
                  "data/images/manifest.parquet", "data/clean", "data/audit")
READ_ONCE = ("import os, sys\n"
             "total = 0\n"
             "for top in sys.argv[1:]:\n"
             "    walk = os.walk(top) if os.path.isdir(top) else [('', [], [top])]\n"
             "    for folder, _, names in walk:\n"
             "        for name in names:\n"
             "            with open(os.path.join(folder, name), 'rb') as f:\n"
             "                while chunk := f.read(1 << 20):\n"
             "                    total += len(chunk)\n"
             "print(total)\n")


@dataclass
class Step:
    """One measured step at one N."""

    n: int
    photos: int
    step: str
    rc: int
    wall_s: float
    cpu_s: float
    cpu_ms_per_photo: float
    peak_rss_mib: float
    written_mib: float
    files_added: int


def steps(dataset_name: str, registry: str, last_stage: str = STAGES[-1]) -> list[tuple[str, list[str]]]:
    """(name, argv) of every step, in order; ``python`` is this interpreter.

    With ``last_stage`` before ``package`` only the stages up to it run, DVC's steps name them as targets, and
    the package's steps are left out: the cheaper stages of a size whose later ones cannot finish in time.
    """
    py, dvc = [sys.executable, "-m"], [sys.executable, "-m", "dvc"]
    stages = STAGES[: STAGES.index(last_stage) + 1]
    targets = [] if last_stage == STAGES[-1] else list(stages)
    listed = [(stage, [*py, f"pipeline.stages.{stage}"]) for stage in stages]
    upto = f", to {last_stage}" if targets else ""
    listed += [(f"dvc commit{upto}", [*dvc, "commit", "-f", "-q", *targets]),
               (f"dvc repro (no-op{upto})", [*dvc, "repro", "-q", *targets[-1:]]),
               (f"dvc status{upto}", [*dvc, "status", "-q", *targets])]
    if targets:
        return listed
    return [*listed,
            ("read package inputs", [sys.executable, "-c", READ_ONCE, *PACKAGE_INPUTS]),
            ("pull --list", [*py, "pipeline.pull", dataset_name, "--registry", registry, "--list"]),
            ("pull", [*py, "pipeline.pull", dataset_name, "--registry", registry, "--dest", "pulled"])]


def count_files(folder: Path) -> int:
    """Files under ``folder`` (the mirror's own folder excluded)."""
    total = 0
    for _, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "mirror"]
        total += len(names)
    return total


#: Runs the step as its child and writes the child's rusage as JSON to argv[1]. A fresh small interpreter forks
#: it because Linux keeps a process's peak RSS across fork and exec: a step forked straight from this
#: benchmark (mirror, pandas and all) would report this process's RSS as its own.
LAUNCHER = ("import json, os, sys\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    os.execvp(sys.argv[2], sys.argv[2:])\n"
            "_, status, usage = os.wait4(pid, 0)\n"
            "with open(sys.argv[1], 'w') as out:\n"
            "    json.dump({'rc': os.waitstatus_to_exitcode(status), 'cpu': usage.ru_utime + usage.ru_stime,\n"
            "               'rss_kib': usage.ru_maxrss, 'written': usage.ru_oublock * 512}, out)\n")


def run_step(argv: list[str], cwd: Path, env: dict[str, str], log: Path,
             timeout: float) -> tuple[int, float, float, float, float]:
    """Run ``argv``; (exit code, wall s, CPU s, peak RSS MiB, MiB written) from the kernel's accounting."""
    usage_file = log.with_suffix(".usage.json")
    usage_file.unlink(missing_ok=True)
    started = time.monotonic()
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(argv[:4])}\n".encode())
        out.flush()
        child = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(usage_file), *argv], cwd=cwd, env=env,
                                 stdout=out, stderr=out, start_new_session=True)
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, 9)  # the step's whole session: the launcher, the step, its workers
            child.wait()
    wall = time.monotonic() - started
    if not usage_file.exists():  # killed before the step ended
        return -9, wall, float("nan"), float("nan"), float("nan")
    usage = json.loads(usage_file.read_text())
    return usage["rc"], wall, usage["cpu"], usage["rss_kib"] / 1024, usage["written"] / 2**20


def selected_photos(workspace: Path) -> int:
    """Distinct photos the select stage chose: the N every per-photo figure is divided by."""
    table = pq.read_table(workspace / "data" / "selected.parquet", columns=["ImageID"])
    return len(set(table.column("ImageID").to_pylist()))


def resume_one(n: int, args: argparse.Namespace) -> list[Step]:
    """The steps from ``args.resume_from`` on, in the workspace an earlier ``--keep`` run left at ``n``, with
    this checkout's code and dvc.yaml (synced in and committed, as the demo does); no mirror is served, since
    the stages after download read only the workspace."""
    workspace = Path(args.out) / f"ws-{n}"
    if not (workspace / "params.yaml").is_file():
        raise SystemExit(f"{workspace}: no kept workspace to resume (run with --keep first)")
    import yaml

    prepare_workspace(workspace, yaml.safe_load((workspace / "params.yaml").read_text()))
    name = "openimages/" + "-".join(sorted(label.lower() for label in LABELS))
    listed = steps(name, "data/quilt-registry", args.last_stage)
    if args.resume_from not in [step for step, _ in listed]:
        raise SystemExit(f"--resume-from {args.resume_from} comes after --last-stage {args.last_stage}")
    start = [step for step, _ in listed].index(args.resume_from)
    return run_steps(n, listed[start:], workspace, Path(args.out), args, selected_photos(workspace))


def run_steps(n: int, listed: list[tuple[str, list[str]]], workspace: Path, out: Path, args: argparse.Namespace,
              photos: int = 0) -> list[Step]:
    """Run ``listed`` in ``workspace``, one process each, measured; stop at the first that fails."""
    env = {**os.environ, "PYTHONPATH": str(workspace), "PIPELINE_PROGRESS_SECONDS": "60",
           "DVC_NO_ANALYTICS": "1", "QUILT_DISABLE_USAGE_METRICS": "true"}
    rows: list[Step] = []
    files = count_files(workspace)
    for step, argv in listed:
        rc, wall, cpu, rss, written = run_step(argv, workspace, env, out / f"ws-{n}.log", args.step_timeout)
        if step == "select" and rc == 0:
            photos = selected_photos(workspace)
        now = count_files(workspace)
        row = Step(n, photos, step, rc, round(wall, 2), round(cpu, 2), 0.0, round(rss, 1), round(written, 1),
                   now - files)
        files = now
        rows.append(row)
        print(f"N={n} {step:22s} rc={rc} wall {wall:8.1f} s  CPU {cpu:8.1f} s  "
              f"{1000 * cpu / max(photos, 1):8.2f} ms/photo  RSS {rss:7.0f} MiB  written {written:8.1f} MiB  "
              f"+{row.files_added} files", flush=True)
        if rc != 0:
            print(f"N={n}: {step} failed (exit {rc}); see {out / f'ws-{n}.log'}", flush=True)
            break
    return per_photo(rows, photos)


def bench_one(n: int, args: argparse.Namespace) -> list[Step]:
    """Every step at about ``n`` photos; the rows measured (fewer when a step fails)."""
    out = Path(args.out)
    per_label = max(2, n * 4 // 9)  # 2 labels + the Submarine sandwich pictures Sandwich takes: ~n photos
    t0, c0 = time.monotonic(), time.process_time()
    mirror = Mirror(root=out / f"mirror-{n}", labels=LABELS, images_per_label=per_label, size=PICTURE,
                    faults=False, seed=0, pool=args.pool, progress=True).start()
    print(f"N={n}: mirror of {len(mirror.truth)} images ready in {time.monotonic() - t0:.0f} s "
          f"({time.process_time() - c0:.0f} CPU s)", flush=True)
    workspace = out / f"ws-{n}"
    try:
        if workspace.exists():
            shutil.rmtree(workspace)
        overrides = {**OVERRIDES, "source.base_url": mirror.base_url, "source.cvdf_url": mirror.cvdf_url}
        params = load_params(Path("/nonexistent/params.yaml"), overrides).to_dict()
        prepare_workspace(workspace, params)
        name = "openimages/" + "-".join(sorted(label.lower() for label in LABELS))
        return run_steps(n, steps(name, "data/quilt-registry", args.last_stage)[: args.steps], workspace, out, args)
    finally:
        mirror.stop()
        if not args.keep and workspace.exists():
            shutil.rmtree(workspace)


def per_photo(rows: list[Step], photos: int) -> list[Step]:
    """Every row of one N with the photos select chose (known only after the metadata step) and CPU per photo."""
    for row in rows:
        row.photos = photos
        row.cpu_ms_per_photo = round(1000 * row.cpu_s / photos, 3) if photos else float("nan")
    return rows


def table(rows: list[Step]) -> str:
    """The markdown table of BENCHMARKS.md: one row per step, the sizes side by side."""
    sizes = sorted({r.n for r in rows})
    by = {(r.step, r.n): r for r in rows}
    names = list(dict.fromkeys(r.step for r in rows))
    head = "| step | " + " | ".join(f"N={n:,}: wall s, CPU ms/photo, peak RSS MiB, MiB written, files"
                                   for n in sizes) + " |"
    lines = [head, "|---|" + "---|" * len(sizes)]
    for name in names:
        cells = []
        for n in sizes:
            r = by.get((name, n))
            cells.append("-" if r is None else
                         f"{r.wall_s:.1f}, {r.cpu_ms_per_photo:.2f}, {r.peak_rss_mib:.0f}, {r.written_mib:.1f}, "
                         f"{r.files_added}" + ("" if r.rc == 0 else f" (exit {r.rc})"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[Step], path: Path) -> None:
    """CPU ms per photo against N, log-log, one line per step: a flat line is linear cost."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 7))
    for i, name in enumerate(dict.fromkeys(r.step for r in rows)):
        points = sorted((r.photos, r.cpu_ms_per_photo) for r in rows if r.step == name and r.rc == 0 and r.photos)
        if points:  # 20 colours and three markers: no two steps look alike
            ax.plot(*zip(*points), marker="os^"[i % 3], color=plt.cm.tab20(i % 20), label=name)
    ax.set(xscale="log", yscale="log", xlabel="photos selected (N)", ylabel="CPU ms per photo",
           title="Cost per photo as the work grows (flat = linear)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(rows: list[Step], out: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame([asdict(r) for r in rows])
    frame.to_csv(out / "scale.csv", index=False)
    (out / "scale.json").write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
    plot(rows, out / "scale.png")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000, 100000], metavar="N",
                        help="photos to select (none: redraw the table and plot from the results in --out)")
    parser.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"))
    parser.add_argument("--pool", type=int, default=24, help="pre-drawn backgrounds and objects per class")
    parser.add_argument("--steps", type=int, default=None, help="run only the first K steps")
    parser.add_argument("--last-stage", choices=STAGES, default=STAGES[-1],
                        help="run the stages up to this one, then DVC's steps on them only (default: all)")
    parser.add_argument("--step-timeout", type=float, default=4 * 3600, help="seconds before a step is killed")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (default: removed after)")
    parser.add_argument("--resume-from", choices=STAGES[STAGES.index("crop"):],
                        help="continue each size's kept workspace from this stage with this checkout's code (its "
                             "earlier rows stay)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # each size's workspace under --out is replaced: a second run with the same --out waits for this one
    with file_lock(out.parent / f".{out.name}.lock", f"another run with --out {out}"):
        previous = out / "scale.json"
        rows = [Step(**r) for r in json.loads(previous.read_text())] if previous.exists() else []
        for n in {r.n for r in rows}:
            same = [r for r in rows if r.n == n]
            per_photo(same, max(r.photos for r in same))
        rows = run_sizes(rows, args)
        if not args.sizes:
            write_results(rows, out)
    print(table(rows))
    print(f"results: {out / 'scale.csv'}, {out / 'scale.json'}, {out / 'scale.png'}")
    return 0


def run_sizes(rows: list[Step], args: argparse.Namespace) -> list[Step]:
    """Every size of ``args.sizes`` measured (or resumed) in turn, the results written after each."""
    out = Path(args.out)
    for n in args.sizes:
        if args.resume_from:
            measured = resume_one(n, args)
            rows = [r for r in rows if r.n != n or r.step not in {m.step for m in measured}] + measured
            per_photo([r for r in rows if r.n == n], measured[0].photos if measured else 0)
        else:
            rows = [r for r in rows if r.n != n] + bench_one(n, args)
        write_results(rows, out)  # after every size: a long run killed later still leaves its results
    return rows


if __name__ == "__main__":
    sys.exit(main())
