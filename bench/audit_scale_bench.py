"""The audit after its embeddings as the crops grow: CPU per crop and peak RSS at 10k, 30k and 112k crops.

    python bench/audit_scale_bench.py [--sizes 10000 30000 112000] [--mode findings|label|outliers|audit]
        [--torch] [--code DIR ...]

At 100k photos the audit holds ~112k crops' embeddings (1,280 float32 numbers each, 573 MB); this measures
what the audit does with them, without computing them (45 CPU minutes at 100k):

- ``--mode findings``: synthetic embeddings with class structure (``--classes`` centres, crops around them,
  5 % of the labels flipped, 1 % of the crops scattered far away) into
  :func:`pipeline.core.audit.ledger.decide`: the K-fold logistic regression, confident learning, the
  outlier search and the ledger's columns (``--torch``: with torch imported first, as in a run that has
  just computed embeddings; without, as a re-run whose embeddings were all cached);
- ``--mode label`` and ``--mode outliers``: one of the two findings alone, on the same embeddings
  (:func:`~pipeline.core.audit.findings.out_of_sample_probs`, :func:`~pipeline.core.audit.findings.outlier_scores`);
- ``--mode audit``: the real :func:`pipeline.core.audit.ledger.audit` on N small JPEG crops whose
  embeddings are already in the cache (the same synthetic vectors), so only the forward passes are skipped:
  reading and hashing each crop, its quality statistics, loading the cached embeddings, then the findings.
  The fixture (crops and a filled cache per ``--code``) is written once under ``--work`` and reused.

Each size and code runs in a fresh process; it prints the CPU seconds (user + system, its children
included) of the measured call, CPU ms per crop, the RSS before the call (interpreter, imports, the
inputs) and the process's peak RSS (``ru_maxrss``). ``--code`` runs the same sizes against other source
trees (e.g. an older commit unpacked with ``git archive``), so before and after compare in one run; with
``--mode audit`` it also says whether their ledgers are equal.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: synthetic embeddings, labels and quality statistics of ``n`` crops (the same for every code and mode)
SYNTHETIC = """
import numpy as np
def synthetic(n, classes, dim=1280):
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, size=(classes, dim)).astype(np.float32)
    truth = rng.integers(classes, size=n)
    features = np.empty((n, dim), np.float32)
    for start in range(0, n, 4096):  # in blocks: no float64 matrix of all crops before the measured call
        rows = slice(start, min(n, start + 4096))
        features[rows] = centres[truth[rows]] + rng.normal(0, 2.0, size=(len(truth[rows]), dim))
    far = rng.choice(n, n // 100, replace=False)
    features[far] = rng.normal(0, 4, size=(len(far), dim))
    labels = truth.copy()
    flipped = rng.choice(n, n // 20, replace=False)
    labels[flipped] = (labels[flipped] + 1) % classes
    return features, labels
"""

FINDINGS = SYNTHETIC + """
import json, resource, sys, time
import pandas as pd
from pipeline.core.audit import findings, ledger
from pipeline.core.base.params import AuditParams
n, classes, torch, step = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "torch", sys.argv[4]
if torch:  # as after computing embeddings: torch and the backbone's code loaded
    import pipeline.core.learn.models
features, labels = synthetic(n, classes)
rng = np.random.default_rng(1)
quality = pd.DataFrame({k: rng.uniform(0.3, 0.7, n) for k in ledger.QUALITY})  # nothing dark, light, odd
quality["blurry"] *= 100
quality["low_information"] += 1
measured = ledger.Measured(np.arange(n), [f"{i:064x}" for i in range(n)], features, quality)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.process_time()
if step == "findings":
    decided = ledger.decide(labels, [f"c{i}" for i in range(classes)], measured, AuditParams())["decision"]
elif step == "label":
    decided = pd.Series(findings.out_of_sample_probs(features, labels, 5, 0).argmax(axis=1) == labels)
else:
    scores, cut = findings.outlier_scores(features, 3.0)
    decided = pd.Series(scores > cut)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"cpu": time.process_time() - start + children.ru_utime + children.ru_stime,
                  "rss_before_mib": before / 1024,
                  "peak_mib": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children.ru_maxrss) / 1024,
                  "decisions": decided.value_counts().to_dict()}))
"""

FIXTURE = SYNTHETIC + """
import hashlib, io, sys
from pathlib import Path
from PIL import Image
from pipeline.core.audit.embed import EmbeddingCache
n, classes, folder, cache_dir = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
features, labels = synthetic(n, classes)
rng = np.random.default_rng(2)
shas = []
for i in range(n):
    path = folder / f"{i // 1000:04d}" / f"{i:07d}.jpg"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        path.write_bytes(buffer.getvalue())
    shas.append(hashlib.sha256(path.read_bytes()).hexdigest())
np.save(folder / "labels.npy", labels)
cache = EmbeddingCache(cache_dir, 32)
if hasattr(cache, "put_many"):
    cache.put_many(shas, features)
else:
    for sha, vector in zip(shas, features):
        cache.put(sha, vector)
"""

AUDIT = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
import pandas as pd
from pipeline.core.audit.ledger import audit
from pipeline.core.base.params import AuditParams
n, folder, cache_dir, out = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
labels = np.load(folder / "labels.npy")
files = [folder / f"{i // 1000:04d}" / f"{i:07d}.jpg" for i in range(n)]
table = pd.DataFrame({"ImageID": [f"{i:016x}" for i in range(n)], "Label": [f"c{k}" for k in labels]})
params = AuditParams(img_size=32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.process_time()
ledger, summary = audit(table, files, params, cache_dir, "cpu")
children = resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = time.process_time() - start + children.ru_utime + children.ru_stime
ledger.to_parquet(out)
print(json.dumps({"cpu": cpu, "rss_before_mib": before / 1024,
                  "peak_mib": max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, children.ru_maxrss) / 1024,
                  "computed": summary["embeddings_computed"], "seconds": summary["seconds"],
                  "decisions": summary["decisions"]}))
"""


def child(script: str, args: list, code: Path) -> dict:
    """Run ``script`` in a fresh interpreter importing the pipeline from ``code``; its printed JSON."""
    env = {"PYTHONPATH": str(code), "PATH": os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # run inside ``code``: ``python -c`` puts the working folder before PYTHONPATH on sys.path
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=code)
    if done.returncode:
        raise SystemExit(f"{code} {args}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_size(n: int, mode: str, classes: int, torch: bool, code: Path, name: str, work: Path) -> dict:
    """One size against one source tree, in its own process (``--mode audit``: the fixture written first)."""
    if mode != "audit":
        return child(FINDINGS, [n, classes, "torch" if torch else "-", mode], code)
    crops, cache = work / f"crops-{n}", work / f"cache-{name}-{n}"
    if not cache.exists():
        child(FIXTURE + "\nprint('{}')", [n, classes, crops, cache], code)
    return child(AUDIT, [n, crops, cache, work / f"ledger-{name}-{n}.parquet"], code)


def same_ledgers(work: Path, n: int, names: list[str]) -> str:
    """Whether every code's ledger at ``n`` equals the first one's (floats to 1e-9)."""
    import pandas as pd
    first = pd.read_parquet(work / f"ledger-{names[0]}-{n}.parquet")
    for name in names[1:]:
        other = pd.read_parquet(work / f"ledger-{name}-{n}.parquet")
        try:
            pd.testing.assert_frame_equal(first, other, rtol=1e-9)
        except AssertionError:
            return "differ"
    return "equal"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 112_000])
    parser.add_argument("--mode", choices=["findings", "label", "outliers", "audit"], default="findings")
    parser.add_argument("--classes", type=int, default=2, help="classes of the synthetic crops (2: the default labels)")
    parser.add_argument("--torch", action="store_true",
                        help="--mode findings: import torch and the backbone's code first, as a run that computed "
                             "embeddings has (~650 MiB of RSS)")
    parser.add_argument("--code", type=Path, nargs="+", default=[REPO],
                        help="source trees to import the pipeline from (default: this one)")
    parser.add_argument("--work", type=Path, default=REPO / "bench/out/audit-scale",
                        help="--mode audit: where the crops, caches and ledgers go")
    args = parser.parse_args()
    args.work, args.code = args.work.resolve(), [code.resolve() for code in args.code]
    args.work.mkdir(parents=True, exist_ok=True)
    names = [f"{i}-{code.name}" for i, code in enumerate(args.code)]
    print(f"{'crops':>8} {'code':>16} {'CPU s':>8} {'CPU ms/crop':>12} {'RSS before MiB':>15} {'peak RSS MiB':>13}  "
          "decisions")
    for n in args.sizes:
        started = time.monotonic()
        for name, code in zip(names, args.code):
            got = measure_size(n, args.mode, args.classes, args.torch, code, name, args.work)
            extra = f"  computed {got['computed']}, seconds {got['seconds']}" if args.mode == "audit" else ""
            print(f"{n:>8,} {name:>16} {got['cpu']:>8.1f} {1000 * got['cpu'] / n:>12.3f} "
                  f"{got['rss_before_mib']:>15.0f} {got['peak_mib']:>13.0f}  {got['decisions']}{extra}", flush=True)
        if args.mode == "audit" and len(names) > 1:
            print(f"# {n:,}: ledgers {same_ledgers(args.work, n, names)}")
        print(f"# {n:,}: {time.monotonic() - started:.0f} s wall", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
