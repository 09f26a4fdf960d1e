"""The metadata stage (``python -m pipeline.stages.metadata``): :mod:`.transfer` fetches big files
resumably under the one HTTP policy, :mod:`.convert` turns the CSVs into the Parquet cache, :mod:`.stage`
decides what to fetch and rebuild."""
