"""Write a seeded, full-size Open Images V6 train box CSV and image table for the metadata benchmark.

The real files are 2.26 GB (14,610,229 boxes, 21 columns) and 638 MB (1,743,042 images, 12 columns);
downloading them for a benchmark is slow and not reproducible offline, so we synthesise files with the
same shape: the real columns in the real order, the real number formats (``0.123456``, flags ``1/0/-1``,
base64 MD5s, Flickr-like URLs, CSV-quoted titles with commas and quotes, empty Rotation), both sorted by
ImageID like the originals, and a Zipf-like label skew over the real 600-class hierarchy with Hamburger,
Sandwich and Submarine sandwich pinned at an assumed order of magnitude (a few thousand boxes each).

Speed matters (it runs on a loaded 2-core machine): every row is assembled as a fixed-width byte
matrix with numpy (variable-length fields padded with NUL bytes), the NULs are squeezed out in one
vectorised pass and the chunk is written at once; no per-row Python.

The files are laid out as the metadata stage's raw cache (``<out>/data/metadata/raw/<official path>``)
next to a ``params.yaml``, so ``python -m pipeline.stages.metadata`` in ``<out>`` converts them without a
download.  Usage: ``python bench/gen_openimages.py [--out bench/out/ws] [--seed 0] [--scale 1.0]``.
"""
from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "openimages-samples"
BOXES_PATH = "v6/oidv6-train-annotations-bbox.csv"
IMAGES_PATH = "2018_04/train/train-images-boxable-with-rotation.csv"
CLASSES_PATH = "v5/class-descriptions-boxable.csv"
HIERARCHY_PATH = "2018_04/bbox_labels_600_hierarchy.json"

N_BOXES = 14_610_229
N_IMAGES = 1_743_042
#: boxes per label for the labels the benchmark selects (the rest follow a Zipf law)
PINNED = {"/m/0cdn1": 3_000, "/m/0l515": 3_700, "/m/06pcq": 1_000}  # Hamburger, Sandwich, Submarine sandwich

BOX_HEADER = (
    "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,"
    "IsInside,XClick1X,XClick2X,XClick3X,XClick4X,XClick1Y,XClick2Y,XClick3Y,XClick4Y\n"
)
IMAGE_HEADER = (
    "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
    "OriginalMD5,Thumbnail300KURL,Rotation\n"
)
LICENSES = [
    "https://creativecommons.org/licenses/by/2.0/",
    "https://creativecommons.org/licenses/by-sa/2.0/",
    "https://creativecommons.org/licenses/by-nd/2.0/",
    "https://creativecommons.org/licenses/by-nc/2.0/",
]
WORDS = (
    "lunch dinner party summer beach city street market food cafe burger sandwich friends family trip day "
    "night old new house garden park river lake tree dog cat car bike bus train station museum view sunset"
).split()

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_DIGITS = np.frombuffer(b"0123456789", dtype=np.uint8)


def text(values: list[str] | np.ndarray) -> np.ndarray:
    """Byte strings -> an (n, width) uint8 matrix, right-padded with NUL (squeezed out on write)."""
    arr = np.asarray(values, dtype="S")
    return arr.view(np.uint8).reshape(len(arr), arr.dtype.itemsize)


def const(value: str, n: int) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(value.encode(), dtype=np.uint8), (n, len(value)))


def hex_digits(values: np.ndarray, width: int) -> np.ndarray:
    """Unsigned integers -> fixed-width lower-case hex (``width`` nibbles, most significant first)."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    return _HEX[((values.astype(np.uint64)[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]


def decimal(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers -> decimal without leading zeros (NUL-padded to ``width``)."""
    powers = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    digits = (values.astype(np.int64)[:, None] // powers) % 10
    out = _DIGITS[digits]
    leading = np.cumsum(digits != 0, axis=1) == 0
    leading[:, -1] = False
    out[leading] = 0
    return out


def fraction6(micro: np.ndarray) -> np.ndarray:
    """Integers 0..1_000_000 -> ``0.123456`` / ``1.000000`` (8 bytes), as the real files print them."""
    out = np.empty((len(micro), 8), dtype=np.uint8)
    out[:, 0] = _DIGITS[micro // 1_000_000]
    out[:, 1] = ord(".")
    out[:, 2:] = decimal(micro % 1_000_000 + 1_000_000, 7)[:, 1:]
    return out


def flag(values: np.ndarray) -> np.ndarray:
    """1 / 0 / -1 -> ``1``, ``0``, ``-1`` (2 bytes, NUL-padded)."""
    out = np.zeros((len(values), 2), dtype=np.uint8)
    out[:, 0] = np.where(values < 0, ord("-"), _DIGITS[np.abs(values)])
    out[:, 1] = np.where(values < 0, ord("1"), 0)
    return out


def md5_base64(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random 16-byte digests in base64 (``...==``), vectorised by padding each digest to 18 bytes."""
    raw = np.zeros((n, 18), dtype=np.uint8)
    raw[:, :16] = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    out = np.frombuffer(base64.b64encode(raw.tobytes()), dtype=np.uint8).reshape(n, 24).copy()
    out[:, 22:] = ord("=")
    return out


def write_rows(fh, fields: list[np.ndarray]) -> int:
    """Join fields with commas, end rows with newlines, drop the NUL padding, append to ``fh``."""
    n = len(fields[0])
    comma, newline = const(",", n), const("\n", n)
    parts = []
    for f in fields:
        parts += [f, comma]
    parts[-1] = newline
    matrix = np.concatenate(parts, axis=1)
    data = matrix[matrix != 0].tobytes()
    fh.write(data)
    return len(data)


def image_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct random 64-bit ids, sorted (16 hex digits sort like the integers)."""
    ids = np.unique(rng.integers(0, 2**64, size=n + n // 1000 + 16, dtype=np.uint64))
    return np.sort(rng.choice(ids, size=n, replace=False))


def label_probabilities(mids: list[str], rng: np.random.Generator) -> np.ndarray:
    """Zipf-like frequencies over the classes (a few labels take most boxes), pinned ones fixed."""
    ranks = rng.permutation(len(mids)) + 1
    p = 1.0 / ranks.astype(float) ** 0.9
    pinned = np.array([m in PINNED for m in mids])
    p[pinned] = 0
    p *= (1 - sum(PINNED.values()) / N_BOXES) / p.sum()
    for i, m in enumerate(mids):
        if m in PINNED:
            p[i] = PINNED[m] / N_BOXES
    return p / p.sum()


def write_boxes(path: Path, ids: np.ndarray, counts: np.ndarray, mids: list[str], rng, chunk_images: int) -> int:
    probs = label_probabilities(mids, rng)
    mid_matrix = text(mids)
    sources = text(["xclick", "activemil"])
    size = 0
    with path.open("wb") as fh:
        fh.write(BOX_HEADER.encode())
        for start in range(0, len(ids), chunk_images):
            box_ids = np.repeat(ids[start:start + chunk_images], counts[start:start + chunk_images])
            n = len(box_ids)
            xs = np.sort(rng.integers(0, 1_000_001, size=(n, 2)), axis=1)
            ys = np.sort(rng.integers(0, 1_000_001, size=(n, 2)), axis=1)
            flags = rng.choice(np.array([0, 1, -1]), size=(n, 5), p=[0.74, 0.25, 0.01])
            clicks = rng.integers(0, 1_000_001, size=(n, 8))
            fields = [
                hex_digits(box_ids, 16),
                sources[rng.integers(0, 2, size=n)],
                mid_matrix[rng.choice(len(mids), size=n, p=probs)],
                const("1", n),
                fraction6(xs[:, 0]), fraction6(xs[:, 1]), fraction6(ys[:, 0]), fraction6(ys[:, 1]),
                *(flag(flags[:, j]) for j in range(5)),
                *(fraction6(clicks[:, j]) for j in range(8)),
            ]
            size += write_rows(fh, fields)
    return size


def word_pool(rng: np.random.Generator, n: int, quoted_share: float) -> np.ndarray:
    """Titles/authors: a few words; some CSV-quoted with a comma or an escaped quote, as Flickr's are."""
    words = np.array(WORDS)
    out = []
    lengths = rng.integers(1, 5, size=n)
    picks = rng.integers(0, len(words), size=(n, 4))
    quoted = rng.random(n) < quoted_share
    for i in range(n):
        title = " ".join(words[picks[i, : lengths[i]]]).capitalize()
        if quoted[i]:
            title = '"' + title.replace(" ", ", ", 1) + (' ""2010""' if i % 3 == 0 else "") + '"'
        out.append(title)
    return text(out)


def write_images(path: Path, ids: np.ndarray, rng, chunk: int) -> int:
    users = text([f"user{u:07d}" + ("@N0" + str(u % 9) if u % 4 == 0 else "") for u in range(200_000)])
    authors = word_pool(rng, 50_000, quoted_share=0.02)
    titles = word_pool(rng, 200_000, quoted_share=0.08)
    licenses = text(LICENSES)
    rotations = text(["0.0", "90.0", "180.0", "270.0", ""])
    size = 0
    with path.open("wb") as fh:
        fh.write(IMAGE_HEADER.encode())
        for start in range(0, len(ids), chunk):
            img = ids[start:start + chunk]
            n = len(img)
            farm = decimal(rng.integers(1, 10, size=n), 1)
            server = decimal(rng.integers(1000, 10000, size=n), 4)
            photo = decimal(rng.integers(10**9, 4 * 10**10, size=n), 11)
            secret = hex_digits(rng.integers(0, 2**40, size=n, dtype=np.int64), 10)
            secret_z = hex_digits(rng.integers(0, 2**40, size=n, dtype=np.int64), 10)
            user = users[rng.integers(0, len(users), size=n)]
            flickr = [const("https://farm", n), farm, const(".staticflickr.com/", n), server, const("/", n), photo]
            fields = [
                hex_digits(img, 16),
                const("train", n),
                np.concatenate([*flickr, const("_", n), secret, const("_o.jpg", n)], axis=1),
                np.concatenate([const("https://www.flickr.com/photos/", n), user, const("/", n), photo], axis=1),
                licenses[rng.integers(0, len(licenses), size=n)],
                np.concatenate([const("https://www.flickr.com/people/", n), user, const("/", n)], axis=1),
                authors[rng.integers(0, len(authors), size=n)],
                titles[rng.integers(0, len(titles), size=n)],
                decimal(rng.lognormal(13.5, 0.8, size=n).astype(np.int64) + 1000, 9),
                md5_base64(rng, n),
                np.concatenate([*flickr, const("_", n), secret_z, const("_z.jpg", n)], axis=1),
                rotations[rng.choice(5, size=n, p=[0.949, 0.012, 0.004, 0.010, 0.025])],
            ]
            size += write_rows(fh, fields)
    return size


def class_list(hierarchy: dict) -> list[tuple[str, str]]:
    """Every class MID in the real hierarchy, with its real display name where the fixtures have it."""
    known: dict[str, str] = {}
    for name in ("class-descriptions-boxable.v5.first50rows.csv", "class-descriptions-boxable.v5.food-rows.csv"):
        for line in (FIXTURES / name).read_text().splitlines():
            mid, display = line.split(",", 1)
            known[mid] = display
    mids: list[str] = []

    def walk(node: dict) -> None:
        if node["LabelName"] not in mids:
            mids.append(node["LabelName"])
        for child in node.get("Subcategory", []) + node.get("Part", []):
            walk(child)

    walk(hierarchy)
    return [(m, known.get(m, f"Class {i:03d}")) for i, m in enumerate(mids[1:], start=1)]  # [0] is the root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "ws")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full size (for a quick try)")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    raw = args.out / "data" / "metadata" / "raw"
    for rel in (BOXES_PATH, IMAGES_PATH, CLASSES_PATH, HIERARCHY_PATH):
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
    hierarchy_text = (FIXTURES / "bbox_labels_600_hierarchy.json").read_text()
    classes = class_list(json.loads(hierarchy_text))
    (raw / HIERARCHY_PATH).write_text(hierarchy_text)
    (raw / CLASSES_PATH).write_text("".join(f"{m},{d}\n" for m, d in classes))
    (args.out / "params.yaml").write_text(
        "labels: [Hamburger, Sandwich]\nsource:\n  version: v6\n  subsets: [train]\n"
        "select:\n  min_box_area: 0.0\n  limit_per_label: 0\n"
    )

    n_images, n_boxes = round(N_IMAGES * args.scale), round(N_BOXES * args.scale)
    ids = image_ids(rng, n_images)
    weights = rng.lognormal(0.0, 0.9, size=n_images)
    counts = 1 + rng.multinomial(n_boxes - n_images, weights / weights.sum())
    images_bytes = write_images(raw / IMAGES_PATH, ids, rng, chunk=100_000)
    print(f"{raw / IMAGES_PATH}: {n_images:,} images, {images_bytes / 1e6:,.0f} MB", flush=True)
    boxes_bytes = write_boxes(raw / BOXES_PATH, ids, counts, [m for m, _ in classes], rng, chunk_images=40_000)
    print(f"{raw / BOXES_PATH}: {n_boxes:,} boxes, {boxes_bytes / 1e6:,.0f} MB")
    print(f"generated in {time.perf_counter() - t0:.1f} s (seed {args.seed})")


if __name__ == "__main__":
    main()
