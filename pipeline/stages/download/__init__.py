"""Download stage: every selected image once, politely, verified, resumable (``python -m pipeline.stages.download``).

Modules, one concern each: :mod:`.ratelimit` (which rate board a run books on, the limiter), :mod:`.client` (HTTP with
timeouts, size cap and retries), :mod:`.verify` (placeholder / changed / non-image checks), :mod:`.writer`
(atomic files and the progress journal), :mod:`.batches` (the work units: plan, resume, parts, merge),
:mod:`.runner` (one batch, a plain function any executor can map), :mod:`.collect` (the records workers send
back: journals, parts, the bar), :mod:`.unlisted` (photos no longer selected, set aside), :mod:`.stage` (the
whole stage). A batch is a download work unit; the WebDataset tars of the shards stage are shards.
"""
