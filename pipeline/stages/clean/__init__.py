"""The clean stage (``python -m pipeline.stages.clean``): see :mod:`.stage`."""
