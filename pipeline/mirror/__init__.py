"""A local Open Images mirror: a real HTTP server on 127.0.0.1 serving a small deterministic dataset.

Tests, the demo and the benchmarks point the pipeline at it instead of the internet, so every fault the real
servers show (404s, 429s, stalls, cut bodies, placeholders, changed photos) is met without a network::

    with Mirror(root=tmp / "mirror", labels=("Hamburger", "Sandwich"), faults=True, seed=0) as m:
        load_params(overrides=m.params_overrides())   # source.base_url, source.cvdf_url, labels

or as a process: ``python -m pipeline.mirror --root DIR [--port P]``. Its URLs, faults, switches, files and
modules: docs/architecture.md ("The mirror").
"""
from pipeline.mirror.server import Mirror, RequestRecord

__all__ = ["Mirror", "RequestRecord"]
