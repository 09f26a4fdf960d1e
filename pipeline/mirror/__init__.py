"""A local Open Images mirror: a real HTTP server on 127.0.0.1 serving a small deterministic dataset.

Tests, the demo and the benchmarks point the pipeline at it instead of the internet::

    from pipeline.mirror import Mirror
    with Mirror(root=tmp / "mirror", labels=("Hamburger", "Sandwich"), images_per_label=12,
                size=(320, 240), faults=True, seed=0) as m:
        load_params(overrides=m.params_overrides())   # source.base_url, source.cvdf_url, labels

or as a process: ``python -m pipeline.mirror --root DIR [--port P]`` (prints its URLs, serves until killed).

URL layout (``m.url`` = ``http://127.0.0.1:PORT``):

- ``/openimages/<official path>`` (``m.base_url``): every metadata file of v4..v7 at the paths in
  :mod:`pipeline.core.net.sources`, in the real formats, with the real sample rows mixed in (:mod:`.tables`).
  HEAD, ``Range`` (206/416), ``If-Range``, ``If-None-Match`` (304), ETag and Last-Modified work.
- ``/flickr/<server>/<photo>_<secret>_o.<jpg|png>``: the originals named in the image tables'
  OriginalURL, each misbehaving as its fault says (``m.truth``); ``/flickr/photo_unavailable.png``
  (``m.placeholder_url``) is the look-alike of Flickr's "photo no longer available" image.
- ``/cvdf/<subset>/<ImageID>.jpg`` (``m.cvdf_url``): resized copies (long side <= 1024), always there.
- ``/``: the URLs as JSON.

Run-time switches: ``m.configure(latency=S)`` (seconds added to every request),
``m.configure(metadata_truncate_once=True)`` (the next GET of each metadata file is cut half-way),
``m.reset_faults()`` (re-arm the faults that only hit the first requests of a URL), and the request log
``m.requests`` (``RequestRecord(t, method, path, status, nbytes)``, ``t`` from time.monotonic()) with
``m.clear_requests()``. ``m.truth`` lists every image with its fault and what the pipeline should make of it.

On disk under ``root``: ``flickr/`` and ``cvdf/`` (the image files, re-used by a later start with the
same arguments), ``dataset.json`` (what was drawn) and ``truth.parquet`` (``m.truth``).

Modules: :mod:`.drawing` (pictures), :mod:`.dataset` (images, boxes, faults, files), :mod:`.tables`
(metadata CSVs and the truth table), :mod:`.server` (HTTP, faults, :class:`Mirror`), ``__main__`` (CLI).
"""
from pipeline.mirror.server import Mirror, RequestRecord

__all__ = ["Mirror", "RequestRecord"]
