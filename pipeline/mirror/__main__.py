"""``python -m pipeline.mirror --root DIR``: serve the local Open Images mirror until killed.

Prints its URLs (and, last, one JSON line with the same) so the demo and benchmarks can run it as a
separate process; the same is written to ``ROOT/mirror.json`` and the truth table to ``ROOT/truth.parquet``.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence

from pipeline.core.base.errors import UserError, run_cli
from pipeline.mirror.server import Mirror


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 320x240, got {text!r}") from None
    if not (16 <= width <= 8000 and 16 <= height <= 8000):
        raise argparse.ArgumentTypeError("width and height must be between 16 and 8000")
    return width, height


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.mirror",
        description="Serve a small, deterministic Open Images (metadata of v4..v7 in the real formats, Flickr-like "
                    "originals with injected faults, CVDF-like resized copies) on 127.0.0.1 until killed. Prints "
                    "its URLs, then one JSON line with the same; writes ROOT/mirror.json and ROOT/truth.parquet.",
        epilog="Point the pipeline at it with source.base_url and source.cvdf_url in params.yaml, or with "
               "python -m pipeline.fetch ... --base-url URL --cvdf-url URL.",
    )
    parser.add_argument("--root", required=True, metavar="DIR",
                        help="folder for the generated images (re-used when the arguments match)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default 0: any free port)")
    parser.add_argument("--labels", nargs="+", default=["Hamburger", "Sandwich"], metavar="LABEL",
                        help="display names or MIDs to draw (default: Hamburger Sandwich)")
    parser.add_argument("--images-per-label", type=int, default=12, metavar="N",
                        help="photos drawn per label (default 12)")
    parser.add_argument("--size", type=_size, default=(320, 240), metavar="WxH",
                        help="size of the originals (default 320x240)")
    parser.add_argument("--latency", type=float, default=0.0, metavar="S",
                        help="seconds added to every request (default 0)")
    parser.add_argument("--no-faults", action="store_true", help="serve only clean images (no 404s, placeholders...)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the drawings and faults (default 0)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images_per_label < 1 or args.latency < 0 or not 0 <= args.port <= 65535:
        raise UserError("--images-per-label must be >= 1, --latency >= 0, --port in 0..65535")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    mirror = Mirror(root=args.root, labels=args.labels, images_per_label=args.images_per_label, size=args.size,
                    faults=not args.no_faults, seed=args.seed, port=args.port, latency=args.latency, progress=True)
    with mirror:
        info = {"url": mirror.url, "base_url": mirror.base_url, "cvdf_url": mirror.cvdf_url,
                "placeholder_url": mirror.placeholder_url, "labels": mirror.labels,
                "images": len(mirror.truth), "truth": str(mirror.root / "truth.parquet")}
        (mirror.root / "mirror.json").write_text(json.dumps(info, indent=1) + "\n")
        print(f"mirror: {len(mirror.truth)} images of {', '.join(mirror.labels)} on {mirror.url}")
        for key in ("base_url", "cvdf_url", "placeholder_url", "truth"):
            print(f"  {key}: {info[key]}")
        print(json.dumps(info), flush=True)
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
