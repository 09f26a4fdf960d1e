"""openimages-pipeline: Open Images -> curated, versioned, trained-on image dataset.

The tree is the architecture (docs/architecture.md):

- :mod:`pipeline.stages`: the DVC stages, one package each, written alike (``python -m pipeline.stages.<stage>``);
  a stage reads and writes files and imports only :mod:`pipeline.core`, never another stage.
- :mod:`pipeline.core`: what several stages share: params, paths, errors, atomic file writes, the one HTTP
  policy, guards for untrusted values, images, labels, the status vocabulary, the model file.
- commands users type (``python -m pipeline.<command>``): :mod:`~pipeline.fetch`, :mod:`~pipeline.pull`,
  :mod:`~pipeline.predict`, :mod:`~pipeline.lr_find`, :mod:`~pipeline.report`, :mod:`~pipeline.demo`; thin:
  they parse flags and call stages and the core.
- :mod:`pipeline.mirror`: the local Open Images / Flickr / CVDF server for tests, the demo and benchmarks.
"""
__version__ = "0.2.0"
