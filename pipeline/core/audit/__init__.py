"""Curation that knows its data: embeddings, label issues, outliers and image quality of class-labelled crops.

Shared by the audit stage (``python -m pipeline.stages.audit``, on the clean crops) and the audit command
(``python -m pipeline.audit DIR``, on any class-folder dataset), so both judge a crop the same way:

- :mod:`.embed`: one embedding per crop from the pretrained backbone, cached by the crop's sha256;
- :mod:`.findings`: label issues (cross-validated probabilities + confident learning) and outliers;
- :mod:`.quality`: blurry, dark, light, low-information and odd-aspect crops;
- :mod:`.ledger`: the decision per crop (kept, flagged, rejected), from the findings and the actions chosen;
- :mod:`.report`: the HTML report with contact sheets.
"""
