"""``python -m pipeline.pull NAME --diff A B``: two real package versions in a local registry; the crops that
went between them are named per label with the reason the newer version's ledger gives."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
from package_inputs import run, write_inputs, write_shards_of_splits

NAME = "tests/diff-ds"


def test_diff_names_the_crops_that_went_and_why(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "HOME": str(tmp_path / "home")}
    write_inputs(ws, {"name": NAME, "message": "v1"})
    assert run(ws, env, "pipeline.stages.package").returncode == 0
    first = json.loads((ws / "data/package.json").read_text())["top_hash"]
    # version 2: the audit rejects one crop as a label issue, and the split leaves it out
    splits = pd.read_parquet(ws / "data/splits/splits.parquet")
    gone = splits.iloc[0]
    (ws / "data/splits" / gone["path"]).unlink()
    splits.iloc[1:].to_parquet(ws / "data/splits/splits.parquet", index=False)
    write_shards_of_splits(ws)  # the shards stage after the split
    ledger = pd.read_parquet(ws / "data/audit/ledger.parquet")
    hit = (ledger["ImageID"] == gone["ImageID"]) & (ledger["BoxIndex"] == gone["BoxIndex"])
    ledger.loc[hit, ["decision", "issue"]] = ["rejected", "label_issue"]
    ledger = ledger.assign(score=0.01)
    ledger.to_parquet(ws / "data/audit/ledger.parquet", index=False)
    result = run(ws, env, "pipeline.stages.package")
    assert result.returncode == 0, result.stderr[-2000:]
    second = json.loads((ws / "data/package.json").read_text())["top_hash"]
    assert first != second
    # a diff reads four tables of each version: it fetches those, not the shards (~1 GB at 100k photos), so it
    # works even where the tars' objects cannot be read
    tars = sorted((ws / "data/quilt-registry" / NAME / "objects").glob("*.tar"))
    assert tars
    for tar in tars:
        tar.unlink()
    result = run(ws, env, "pipeline.pull", NAME, "--registry", "data/quilt-registry", "--diff", first, second)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert f"{gone['Label']}: +0 crop(s) (0 photo(s)), -1 crop(s) (1 photo(s))" in lines, result.stdout
    assert "  -1 rejected by the audit: label_issue (score 0.01)" in lines, result.stdout
