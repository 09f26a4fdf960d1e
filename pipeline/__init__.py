"""openimages-pipeline: Open Images -> curated, versioned, trained-on image dataset.

One module per stage (``python -m pipeline.<stage>``), one ``params.yaml`` section per stage.
"""
__version__ = "0.1.0"
