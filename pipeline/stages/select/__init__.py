"""The select stage (``python -m pipeline.stages.select``): see :mod:`.stage`."""
