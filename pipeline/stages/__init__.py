"""The DVC stages (dvc.yaml), in pipeline order: metadata, select, download, crop, clean, split, train,
evaluate, package. Each runs as ``python -m pipeline.stages.<stage>``, reads its section of params.yaml
and talks to the other stages only through files (docs/architecture.md has the contracts)."""
