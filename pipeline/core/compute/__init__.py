"""Where work runs and where its files live: the engine (inline, a process pool, or Dask) behind one call,
the object store shared by many runs, and machine facts (cores, parent death)."""
