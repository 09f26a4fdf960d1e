"""The shards stage (``python -m pipeline.stages.shards``): see :mod:`.stage`."""
