"""The DVC stages (dvc.yaml), one package each, all written alike: ``<stage>/__main__.py`` (the flags) runs
``<stage>/stage.py``'s ``run(params)`` through :func:`pipeline.core.base.stages.run_stage`. Their list, in
pipeline order, is the table :data:`pipeline.core.base.stages.STAGES`. Each reads its section of params.yaml
and talks to the other stages only through files (docs/architecture.md has the contracts)."""
