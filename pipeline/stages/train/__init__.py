"""The train stage (``python -m pipeline.stages.train``): fastai's ``fine_tune`` in plain PyTorch.

:mod:`.loop` runs the freeze/unfreeze one-cycle schedule; :mod:`.stage` sets up from params, trains and
writes the stage's files. Backbones, the model file and batches are shared with evaluate and predict, so
they live in :mod:`pipeline.core.learn`.
"""
