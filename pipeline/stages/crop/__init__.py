"""The crop stage (``python -m pipeline.stages.crop``): see :mod:`.stage`."""
