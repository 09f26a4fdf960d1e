"""Download stage: every selected image once, politely, verified, resumable (``python -m pipeline.stages.download``).

Modules, one concern each: :mod:`.ratelimit` (which rate board a run books on, the limiter), :mod:`.client` (HTTP with
timeouts, size cap and retries), :mod:`.verify` (placeholder / changed / non-image checks), :mod:`.writer`
(atomic files and the progress journal), :mod:`.shards` (plan, resume, parts, merge), :mod:`.runner` (one
shard, a plain function any executor can map), :mod:`.stage` (the whole stage).
"""
