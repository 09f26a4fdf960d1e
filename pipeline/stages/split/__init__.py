"""The split stage (``python -m pipeline.stages.split``): leak-free, stratified class folders
(:mod:`.stage`) and the browsable dataset report (:mod:`.report`, also ``python -m pipeline.report``)."""
