"""Fine-tuning an ImageNet CNN on the class-folder splits (fastai's ``fine_tune`` in plain PyTorch).

``models`` builds backbones and saves/loads ``models/model.pt``; ``data`` turns a split into batches
(decoded once into a tensor cache, augmented on the device); ``loop`` runs the freeze/unfreeze one-cycle
schedule; ``python -m pipeline.train`` is the DVC stage that ties them together.
"""
