"""The audit stage: label issues, outliers and image quality of the clean crops (see :mod:`.stage`)."""
