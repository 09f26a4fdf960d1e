"""The evaluate stage (``python -m pipeline.stages.evaluate``): see :mod:`.stage`."""
