"""The audit's outlier scores as the crops grow: every crop against every other, or against a bounded sample.

    python bench/outlier_bench.py [--sizes 2000 8000 32000] [--reference 20000]

Features are what the audit's backbone gives (1,280 float32 numbers per crop), drawn here as crops around
three class centres plus 1% scattered far away. Each size runs in a fresh process, once as the audit did before the scale
benchmark (every crop against every other, in sklearn's default 1 GiB blocks of distances) and once as
:func:`pipeline.core.audit.findings.outlier_scores` does now (neighbours among at most ``--reference`` crops,
128 MiB blocks); it prints CPU seconds, CPU ms per crop and the process's peak RSS, and how many of the
outliers the full comparison finds the sampled one also finds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ONE = """
import json, resource, sys, time
import numpy as np
from pipeline.core.audit.findings import outlier_scores
n, reference = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
centres = rng.normal(0, 1, size=(3, 1280)).astype(np.float32)
features = centres[rng.integers(3, size=n)] + rng.normal(0, 0.8, size=(n, 1280)).astype(np.float32)
far = rng.choice(n, n // 100, replace=False)
features[far] = rng.normal(0, 3, size=(len(far), 1280)).astype(np.float32)
start = time.process_time()
if reference:
    scores, cut = outlier_scores(features, 3.0, reference)
else:  # the audit before: every crop against every other, sklearn's 1 GiB blocks of distances
    from sklearn.neighbors import NearestNeighbors
    distances, _ = NearestNeighbors(n_neighbors=11, metric="cosine").fit(features).kneighbors(features)
    scores = distances[:, 1:].mean(axis=1)
    q1, q3 = np.percentile(scores, [25, 75])
    cut = q3 + 3.0 * (q3 - q1)
cpu = time.process_time() - start
print(json.dumps({"cpu": cpu, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "outliers": np.flatnonzero(scores > cut).tolist()}))
"""


def run(n: int, reference: int) -> dict:
    done = subprocess.run([sys.executable, "-c", ONE, str(n), str(reference)], capture_output=True, text=True,
                          check=True, env={"PYTHONPATH": str(REPO), "PATH": ""})
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 8000, 32000])
    parser.add_argument("--reference", type=int, default=20_000)
    args = parser.parse_args()
    print(f"{'crops':>8} {'neighbours among':>17} {'CPU s':>8} {'CPU ms/crop':>12} {'peak RSS MiB':>13} "
          f"{'outliers':>9} {'same as all':>12}")
    for n in args.sizes:
        started = time.monotonic()
        full = run(n, 0)
        sampled = run(n, args.reference)
        for name, got in (("all (before)", full), (f"{min(n, args.reference):,}", sampled)):
            same = len(set(got["outliers"]) & set(full["outliers"]))
            print(f"{n:>8,} {name:>17} {got['cpu']:>8.1f} {1000 * got['cpu'] / n:>12.3f} {got['rss_mib']:>13.0f} "
                  f"{len(got['outliers']):>9} {same:>12}", flush=True)
        print(f"# {n:,}: {time.monotonic() - started:.0f} s wall", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
