"""What the train and evaluate stages and the predict and lr_find commands share (needs the ``train``
extra: torch, torchvision): backbones and the model file (:mod:`.models`), class-folder splits to batches
(:mod:`.data`), and device placement and inference (:mod:`.device`)."""
