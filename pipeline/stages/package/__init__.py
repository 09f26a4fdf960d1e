"""The package stage (``python -m pipeline.stages.package``): the dataset and its model as quilt3 packages
(:mod:`.stage`; contents in :mod:`.dataset` and :mod:`.model`, names in :mod:`.naming`, licences in
:mod:`.licences`, what they record about how they were made in :mod:`.provenance`, READMEs in :mod:`.readme`)."""
