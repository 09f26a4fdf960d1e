"""Talking to Open Images' servers: one HTTP policy (retries, backoff, deadlines), the sources (versions,
subsets, hosts), the label list and hierarchy, the metadata cache's layout, and the download rate boards
(one per server, shared by every run on a machine or a Dask scheduler)."""
