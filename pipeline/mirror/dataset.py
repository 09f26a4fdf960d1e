"""The mirror's deterministic synthetic dataset: which images exist, their boxes, faults and files.

:func:`build` draws every picture once into ``root`` (originals under ``root/flickr``, resized copies
under ``root/cvdf``) and records what it made in ``root/dataset.json``; a later start with the same
arguments re-uses those files, so big benchmark mirrors are generated only once. Every random choice
comes from a generator seeded by ``(seed, ImageID)``, so the same arguments give the same bytes.

Nothing here knows the server's port: URLs are added when the metadata is rendered
(:mod:`pipeline.mirror.tables`), because a mirror on port 0 only learns its port when it starts.
"""
from __future__ import annotations

import base64
import csv
import difflib
import functools
import hashlib
import io
import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter

from pipeline.core.base.errors import UserError
from pipeline.mirror import drawing

FIXTURES = Path(__file__).parent / "fixtures"
CLASSES_FILE = FIXTURES / "class-descriptions-boxable.csv"
#: bump when the generator changes, so cached mirrors are regenerated
FORMAT = 5
CVDF_LONG_SIDE = 1024
#: what "upright" means for the rotation faults (also in ``Mirror.truth.attrs["upright"]``)
UPRIGHT = (
    "Every object carries a blue square marker (RGB ~(20,60,235), side ~22% of the box's shorter side) in "
    "its upright top-left corner. Boxes refer to the stored pixel matrix: crop the box from the stored "
    "pixels (ignoring EXIF), rotate the crop counter-clockwise by Rotation degrees, and the marker is at the "
    "top-left."
)


@dataclass(frozen=True)
class Fault:
    """How one kind of broken or awkward image behaves, and what the pipeline should make of it."""

    expected_status: str  # the download manifest's status
    expected_reject: str  # the clean stage's reject_reason ('' = kept)
    detail: str
    expected_audit: str = ""  # the issue the audit stage must find in its crop ('' = none)


FAULTS: dict[str, Fault] = {
    "not_found": Fault("not_found", "not_downloaded", "404 Not Found"),
    "gone": Fault("gone", "not_downloaded", "410 Gone"),
    "forbidden": Fault("forbidden", "not_downloaded", "403 Forbidden"),
    "rate_limited": Fault("ok", "", "429 with Retry-After: 1 for the first 2 requests, then 200"),
    "server_error": Fault("ok", "", "500 for the first 2 requests, then 200"),
    "slow": Fault("ok", "", "first request: headers and a few bytes, then the body stalls ~3 s; later requests fast"),
    "truncated": Fault("ok", "", "first request: connection closed after half the promised Content-Length"),
    "placeholder": Fault("placeholder", "placeholder", "302 to the Flickr-like photo_unavailable.png"),
    "changed": Fault("changed", "changed", "a valid JPEG whose md5/size differ from OriginalMD5/OriginalSize"),
    "corrupt": Fault("ok", "corrupt", "md5/size match the table, but the JPEG stream stops half-way"),
    "exif_rotated": Fault("ok", "", "stored sideways with EXIF Orientation 6, Rotation 270.0. " + UPRIGHT),
    "rotation90": Fault("ok", "", "stored sideways without EXIF, Rotation 90.0. " + UPRIGHT),
    "cmyk": Fault("ok", "", "a CMYK JPEG"),
    "greyscale": Fault("ok", "", "an L-mode (greyscale) JPEG that must be kept (the audit never rejects it for being grey)"),
    "png": Fault("ok", "", "an RGBA PNG with a transparent border"),
    "not_image": Fault("not_image", "not_downloaded", "200 text/html instead of an image"),
    "bad_url": Fault("bad_url", "not_downloaded", "OriginalURL is ftp://"),
    "duplicate": Fault("ok", "duplicate", "two ImageIDs with byte-identical files (duplicate_of names the first)"),
    "near_duplicate": Fault("ok", "near_duplicate", "the same picture re-encoded smaller at a lower quality"),
    "blurry": Fault("ok", "", "the whole photo out of focus (Gaussian blur, radius 1.5 % of its width)", "blurry"),
    "dark": Fault("ok", "", "the whole photo underexposed (every value divided by 10)", "dark"),
    "flat": Fault("ok", "", "its box holds one flat tone and nothing else (a low-information crop)", "low_information"),
    "mislabelled": Fault("ok", "", "the drawing of another label (the next one asked for, else a distractor) "
                         "boxed under this label", "label_issue"),
}
#: photos planted for the audit stage, and the position in the mirror's labels of the label each is boxed under
#: (the first two labels, so the demo's own dataset holds every one of them)
AUDIT_PLANTS = {"blurry": 0, "dark": 1, "flat": 1, "mislabelled": 0, "greyscale": 1}
#: faults whose photo is gone from Flickr: Open Images leaves their Rotation empty
_NO_ROTATION = {"not_found", "gone", "placeholder"}
#: the first image of these pairs is a clean image; the second copies it
_PAIRS = {"duplicate", "near_duplicate"}
#: food classes drawn as distractors when not requested (Submarine sandwich is a subclass of Sandwich)
DISTRACTORS = ("/m/01b9xk", "/m/0663v", "/m/06pcq")

_AUTHORS = ["Michael Beat", "Karen", "jeffreyw", "Ruocaled", "Emily Carlin", "stu_spivack", "Alpha", "Jun Seita",
            "Another Believer", "Nicholas Tang", "Kirti Poddar", "Cheryl Foong"]
_TITLES = ["Lunch", 'The "Big One", again', "IMG_{n:04d}", "Dinner at Joe's, Brooklyn", "DSC{n:05d}",
           'Friday "treat"', "Food, food, food", "untitled", "{n} calories, give or take", "_GUT{n:04d}"]
_LICENSES = ["https://creativecommons.org/licenses/by/2.0/", "https://creativecommons.org/licenses/by-sa/2.0/"]


@dataclass
class BoxRecord:
    """One box, normalised to the stored pixel matrix (Open Images' convention)."""

    LabelName: str
    XMin: float
    XMax: float
    YMin: float
    YMax: float
    Source: str = "xclick"
    IsOccluded: int = 0
    IsTruncated: int = 0
    IsGroupOf: int = 0
    IsDepiction: int = 0
    IsInside: int = 0


@dataclass
class ImageRecord:
    """One image of the dataset and the files made for it (paths relative to the mirror's root)."""

    ImageID: str
    Subset: str
    fault: str
    boxes: list[BoxRecord]
    photo_id: int
    server: int
    secret: str
    user: str
    Author: str
    Title: str
    License: str
    ext: str  # of the original's URL: jpg or png
    OriginalSize: int  # of the true original (what the table promises)
    OriginalMD5: str
    Rotation: float | None
    served: str | None  # the original-URL body on disk, None when nothing is served
    cvdf: str
    duplicate_of: str = ""


@dataclass(frozen=True)
class Spec:
    """Everything that decides the dataset's bytes."""

    labels: tuple[str, ...]  # MIDs, in the order asked for
    images_per_label: int = 12
    size: tuple[int, int] = (320, 240)
    faults: bool = True
    seed: int = 0
    #: 0: every picture drawn on its own (the tests' and the demo's look); N > 0: N backgrounds and N
    #: pictures of each class drawn once, every image composed of them (mirrors of 100k photos, see _composed)
    pool: int = 0

    def key(self) -> dict:
        """What a cached mirror must match; ``pool`` only when set, so mirrors drawn before it stay valid."""
        fields = {k: v for k, v in asdict(self).items() if k != "pool" or v}
        return {**fields, "format": FORMAT, "pillow": PIL.__version__}


def read_classes() -> list[tuple[str, str]]:
    """The real class list rows served by the mirror: (MID, display name)."""
    with CLASSES_FILE.open(newline="") as handle:
        return [(row[0], row[1]) for row in csv.reader(handle)]


def resolve_labels(labels: Sequence[str]) -> tuple[str, ...]:
    """Display names (any case) or MIDs -> MIDs of the served class list; unknown names are a UserError."""
    classes = read_classes()
    by_name = {name.lower(): mid for mid, name in classes}
    display = {name.lower(): name for _, name in classes}
    mids = {mid for mid, _ in classes}
    resolved = []
    for label in labels:
        mid = label if label in mids else by_name.get(label.strip().lower())
        if mid is None:
            close = difflib.get_close_matches(label.strip().lower(), list(by_name), n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(repr(display[c]) for c in close)}?" if close else "see its class list"
            raise UserError(f"mirror: unknown label {label!r}; {hint}")
        if mid not in resolved:
            resolved.append(mid)
    if not resolved:
        raise UserError("mirror: at least one label is needed")
    return tuple(resolved)


def display_names() -> dict[str, str]:
    return dict(read_classes())


# ----------------------------------------------------------------------------------------------------------
# Planning: which images exist


@dataclass
class _Plan:
    image_id: str
    subset: str
    mids: list[str]  # the primary object first
    fault: str = ""
    copy_of: _Plan | None = None
    flags: dict[str, int] = field(default_factory=dict)  # forced flags of the primary box
    shown: str = ""  # mislabelled: the MID drawn in the primary box (boxed under ``mids[0]``)


def _image_id(spec: Spec, *parts: object) -> str:
    return hashlib.sha256("/".join(map(str, (spec.seed, *parts))).encode()).hexdigest()[:16]


def _subset(i: int) -> str:
    """4 of every 6 images in train, 1 in validation, 1 in test; 3 images already fill all three."""
    return ("train", "validation", "test", "train", "train", "train")[i % 6]


#: flags forced on the primary box of the i-th image of each label, so small mirrors still show them
_FORCED_FLAGS = {0: {"unknown": -1}, 3: {"IsGroupOf": 1}, 4: {"IsDepiction": 1}, 5: {"IsOccluded": 1}}


def plan(spec: Spec) -> list[_Plan]:
    """The dataset's images, in a fixed order: per label, then distractors, then faults."""
    plans: list[_Plan] = []
    labels = list(spec.labels)
    distractors = [m for m in DISTRACTORS if m not in labels]
    for li, mid in enumerate(labels):
        for i in range(spec.images_per_label):
            mids = [mid]
            if len(labels) > 1 and i % 4 == 3:  # e.g. a hamburger next to a sandwich
                mids.append(labels[(li + 1) % len(labels)])
            if distractors and i % 5 == 4:
                mids.append(distractors[i % len(distractors)])
            plans.append(_Plan(_image_id(spec, mid, i), _subset(i), mids, flags=_FORCED_FLAGS.get(i, {})))
    for mid in distractors:
        for i in range(max(2, spec.images_per_label // 4)):
            plans.append(_Plan(_image_id(spec, "distractor", mid, i), _subset(i), [mid]))
    if spec.faults:
        for fi, fault in enumerate(FAULTS):
            mid = labels[AUDIT_PLANTS.get(fault, fi) % len(labels)]
            first = _Plan(_image_id(spec, "fault", fault), "train", [mid], fault)
            if fault == "mislabelled":
                first.shown = next(m for m in (*labels, *DISTRACTORS) if m != mid)
            plans.append(first)
            if fault in _PAIRS:  # the copy sorts after the first, so "keep the smallest ImageID" keeps the first
                copy_id = next(c for k in itertools.count() if (c := _image_id(spec, "fault", fault, "copy", k)) > first.image_id)
                plans.append(_Plan(copy_id, "train", [mid], fault, copy_of=first))
    return plans


# ----------------------------------------------------------------------------------------------------------
# Drawing and encoding


def _rng(spec: Spec, image_id: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, int(image_id, 16)])


def _place(mids: list[str], size: tuple[int, int], rng: np.random.Generator) -> list[tuple[str, drawing.Box]]:
    """Boxes in pixels for ``mids``, the first one big, the others where they barely overlap it."""
    width, height = size
    placed: list[tuple[str, drawing.Box]] = []
    for n, mid in enumerate(mids):
        low, high = drawing.ASPECT.get(mid, (0.8, 1.25))
        for _ in range(40):
            aspect = rng.uniform(low, high)
            frac = rng.uniform(0.45, 0.7) if n == 0 else rng.uniform(0.25, 0.4)
            w = frac * width
            h = min(w / aspect, 0.85 * height)
            w = min(w, h * aspect, 0.95 * width)
            x0 = rng.uniform(1, width - w - 1)
            y0 = rng.uniform(1, height - h - 1)
            box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
            if all(_overlap(box, other) < 0.1 for _, other in placed):
                placed.append((mid, box))
                break
    return placed


def _overlap(a: drawing.Box, b: drawing.Box) -> float:
    """Intersection over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def _picture(spec: Spec, plan_: _Plan) -> tuple[Image.Image, list[tuple[str, drawing.Box]]]:
    """The upright photo of ``plan_`` and its boxes (label, pixels), with what the audit must find planted."""
    rng = _rng(spec, plan_.image_id)
    drawn = [plan_.shown or plan_.mids[0], *plan_.mids[1:]]
    if spec.pool:
        image, placed = _composed(spec, drawn, rng)
    else:
        image = drawing.background(spec.size, rng)
        placed = _place(drawn, spec.size, rng)
        for mid, box in placed:
            drawing.draw_object(image, mid, box, rng)
    if placed and plan_.shown:  # the drawing of one label, boxed under another
        placed[0] = (plan_.mids[0], placed[0][1])
    return _plant(image, placed, plan_.fault), placed


def _plant(image: Image.Image, placed: list[tuple[str, drawing.Box]], fault: str) -> Image.Image:
    """The photo as the audit's planted faults spoil it: out of focus, underexposed, or a flat box."""
    if fault == "blurry":
        return image.filter(ImageFilter.GaussianBlur(0.015 * image.width))
    if fault == "dark":
        return image.point(lambda v: v // 10)
    if fault == "flat" and placed:
        ImageDraw.Draw(image).rectangle(placed[0][1], fill=(205, 135, 55))
    return image


#: the size a pooled object is drawn at, as a fraction of the picture's width (boxes are 25-70% of it)
_SPRITE_WIDTH = 0.6


def _composed(spec: Spec, mids: list[str],
              rng: np.random.Generator) -> tuple[Image.Image, list[tuple[str, drawing.Box]]]:
    """A picture made of pooled drawings: a background shifted and shaded per image, objects resized into
    the image's own boxes.

    Drawing one picture takes ~3.7 ms of CPU at 160x120 (most of it Python loops over shapes); composing one
    from ``spec.pool`` pre-drawn backgrounds and objects (a roll, a multiply, a few resizes) ~1.4 ms. The images stay distinct for the clean stage's near-copy check: the shift
    and a per-image low-frequency shading move the whole-photo perceptual hash, and box layouts differ.
    """
    backgrounds, sprites = _pool(spec)
    width, height = spec.size
    base = backgrounds[int(rng.integers(len(backgrounds)))]
    pixels = np.roll(base, (int(rng.integers(height)), int(rng.integers(width))), axis=(0, 1)).astype(np.float32)
    pixels *= _shading(spec.size, rng)[:, :, None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    placed = _place(mids, spec.size, rng)
    for mid, (x0, y0, x1, y1) in reversed(placed):  # the primary object last: on top where boxes touch
        pool = sprites[mid]
        sprite, mask = pool[int(rng.integers(len(pool)))]
        size = (x1 - x0, y1 - y0)
        image.paste(sprite.resize(size, Image.Resampling.BILINEAR), (x0, y0),
                    mask.resize(size, Image.Resampling.NEAREST))
    return image, placed


def _shading(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth (height, width) light field of 0.6..1.4: two plane waves of random direction and phase.

    Each wave is cos(a(y) + b(x)) = cos a cos b - sin a sin b, two outer products: a fraction of the cost
    of evaluating it at every pixel."""
    width, height = size
    xs = 2 * np.pi * np.arange(width, dtype=np.float32) / width
    ys = 2 * np.pi * np.arange(height, dtype=np.float32) / height
    field = np.ones((height, width), dtype=np.float32)
    for _ in range(2):
        kx, ky = rng.uniform(-2.5, 2.5, size=2)
        a, b = ky * ys + rng.uniform(0, 2 * np.pi), kx * xs
        field += 0.2 * (np.outer(np.cos(a), np.cos(b)) - np.outer(np.sin(a), np.sin(b)))
    return field


@functools.lru_cache(maxsize=4)
def _pool(spec: Spec) -> tuple[list[np.ndarray], dict[str, list[tuple[Image.Image, Image.Image]]]]:
    """``spec.pool`` backgrounds (as arrays) and, per class the dataset draws, ``spec.pool`` objects, each with
    the mask of the pixels it painted (pasted through it, an object leaves its neighbours' corners alone)."""
    rng = np.random.default_rng([spec.seed, 0x9001])
    backgrounds = [np.asarray(drawing.background(spec.size, rng)) for _ in range(spec.pool)]
    mids = list(dict.fromkeys([*spec.labels, *DISTRACTORS]))
    sprites: dict[str, list[tuple[Image.Image, Image.Image]]] = {}
    for mid in mids:
        low, high = drawing.ASPECT.get(mid, (0.8, 1.25))
        sprites[mid] = []
        for _ in range(spec.pool):
            w = max(8, int(_SPRITE_WIDTH * spec.size[0]))
            h = max(8, int(w / rng.uniform(low, high)))
            blank = Image.fromarray(backgrounds[int(rng.integers(spec.pool))]).resize((w, h))
            canvas = blank.copy()
            drawing.draw_object(canvas, mid, (0, 0, w, h), rng)
            painted = np.any(np.asarray(canvas) != np.asarray(blank), axis=2)
            sprites[mid].append((canvas, Image.fromarray(painted.astype(np.uint8) * 255, "L")))
    return backgrounds, sprites


def encode(image: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _flags(rng: np.random.Generator, forced: dict[str, int]) -> dict[str, int]:
    """Realistic Is* flags: mostly 0, sometimes 1; 'activemil' boxes have them unknown (-1)."""
    if forced.get("unknown") == -1 or rng.random() < 0.08:
        return {"Source": "activemil", **{k: -1 for k in ("IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")}}
    flags = {
        "Source": "xclick",
        "IsOccluded": int(rng.random() < 0.25),
        "IsTruncated": int(rng.random() < 0.1),
        "IsGroupOf": int(rng.random() < 0.03),
        "IsDepiction": int(rng.random() < 0.03),
        "IsInside": int(rng.random() < 0.02),
    }
    flags.update({k: v for k, v in forced.items() if k != "unknown"})
    return flags


def rotate_box_ccw(box: tuple[float, float, float, float], degrees: int) -> tuple[float, float, float, float]:
    """A normalised (XMin, XMax, YMin, YMax) box after rotating its image ``degrees`` counter-clockwise."""
    x0, x1, y0, y1 = box
    for _ in range((degrees // 90) % 4):  # one CCW quarter turn maps (u, v) to (v, 1 - u)
        x0, x1, y0, y1 = y0, y1, 1 - x1, 1 - x0
    return x0, x1, y0, y1


def _corrupt(jpeg: bytes) -> bytes:
    """The JPEG cut off half-way through its entropy-coded data: headers parse, a full decode fails."""
    return jpeg[: len(jpeg) // 2]


_NOT_IMAGE = b"<!DOCTYPE html><html><head><title>Flickr</title></head><body><p>Sign in to see this photo.</p></body></html>\n"


def _encode_original(plan_: _Plan, upright: Image.Image) -> tuple[Image.Image, bytes, bytes | None, float | None, str]:
    """(stored pixels, the true original's bytes, the served bytes, Rotation, extension) of one image."""
    fault = plan_.fault
    rotation: float | None = 0.0
    stored = upright
    if fault == "exif_rotated":
        stored = upright.rotate(90, expand=True)
        exif = Image.Exif()
        exif[0x0112] = 6
        original = encode(stored, quality=92, exif=exif.tobytes())
        rotation = 270.0
    elif fault == "rotation90":
        stored = upright.rotate(270, expand=True)
        original, rotation = encode(stored, quality=92), 90.0
    elif fault == "cmyk":
        original = encode(stored.convert("CMYK"), quality=92)
    elif fault == "greyscale":
        stored = upright.convert("L")
        original = encode(stored, quality=92)
    elif fault == "png":
        alpha = Image.new("L", upright.size, 0)
        alpha.paste(255, (4, 4, upright.width - 4, upright.height - 4))
        stored = upright.copy()
        stored.putalpha(alpha)
        original = encode(stored, "PNG")
    elif plan_.copy_of is not None and fault == "near_duplicate":
        stored = upright.resize((upright.width * 3 // 4, upright.height * 3 // 4), Image.Resampling.LANCZOS)
        original = encode(stored, quality=70)
    else:
        original = encode(stored, quality=92)
    served: bytes | None = original
    if fault == "changed":
        served = encode(upright.resize((upright.width * 9 // 10, upright.height * 9 // 10)), quality=75)
    elif fault == "corrupt":
        original = served = _corrupt(original)
    elif fault == "not_image":
        served = _NOT_IMAGE
    elif fault in ("not_found", "gone", "forbidden", "placeholder", "bad_url"):
        served = None
    if fault in _NO_ROTATION:
        rotation = None
    return stored, original, served, rotation, "png" if fault == "png" else "jpg"


def _cvdf_copy(stored: Image.Image, fault: str) -> bytes:
    """The CVDF-like resized copy: same pixel matrix (boxes still apply), long side <= 1024, JPEG."""
    image = stored if stored.mode in ("RGB", "L") else stored.convert("RGB")
    scale = CVDF_LONG_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC,
                             reducing_gap=2.0)
    options: dict[str, object] = {"quality": 85}
    if fault == "exif_rotated":
        exif = Image.Exif()
        exif[0x0112] = 6
        options["exif"] = exif.tobytes()
    return encode(image, **options)


def _md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _render(spec: Spec, plan_: _Plan, root: Path) -> ImageRecord:
    source = plan_.copy_of or plan_
    upright, placed = _picture(spec, source)
    stored, original, served, rotation, ext = _encode_original(plan_, upright)
    rng = _rng(spec, plan_.image_id)
    boxes = []
    turn = (360 - int(rotation or 0)) % 360  # the stored pixels are the upright picture turned CCW by this
    for n, (mid, (x0, y0, x1, y1)) in enumerate(placed):
        norm = (x0 / spec.size[0], x1 / spec.size[0], y0 / spec.size[1], y1 / spec.size[1])
        xmin, xmax, ymin, ymax = rotate_box_ccw(norm, turn)
        flags = {"Source": "xclick"} if plan_.fault else _flags(rng, plan_.flags if n == 0 else {})
        boxes.append(BoxRecord(mid, xmin, xmax, ymin, ymax, **flags))
    served_name = None
    if served is not None:
        served_name = f"flickr/{plan_.image_id}.{ext}"
        _write(root / served_name, served)
    cvdf_name = f"cvdf/{plan_.subset}/{plan_.image_id}.jpg"
    _write(root / cvdf_name, _cvdf_copy(stored, plan_.fault))
    digest = hashlib.sha256(plan_.image_id.encode()).digest()
    user_index = digest[0] % len(_AUTHORS)
    return ImageRecord(
        ImageID=plan_.image_id,
        Subset=plan_.subset,
        fault=plan_.fault,
        boxes=boxes,
        photo_id=10_000_000_000 + int.from_bytes(digest[1:6], "big") % 40_000_000_000,
        server=1 + int.from_bytes(digest[6:8], "big") % 9999,
        secret=digest[8:13].hex()[:10],
        user=f"{_AUTHORS[user_index].lower().replace(' ', '-')}",
        Author=_AUTHORS[user_index],
        Title=_TITLES[digest[13] % len(_TITLES)].format(n=digest[14] * 37 + digest[15]),
        License=_LICENSES[digest[16] % len(_LICENSES)],
        ext=ext,
        OriginalSize=len(original),
        OriginalMD5=_md5_b64(original),
        Rotation=rotation,
        served=served_name,
        cvdf=cvdf_name,
        duplicate_of=plan_.copy_of.image_id if plan_.copy_of is not None else "",
    )


def _write(path: Path, data: bytes) -> None:
    """Atomic write: a half-written file must never look like a finished one to the cache check."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Build or re-use


def build(root: Path, spec: Spec, progress: bool = False) -> list[ImageRecord]:
    """Generate the dataset into ``root`` (or re-use an identical earlier one) and return its records."""
    root = Path(root)
    index = root / "dataset.json"
    cached = _load(index, spec)
    if cached is not None:
        return cached
    plans = plan(spec)
    records = [_render(spec, p, root) for p in _progress(plans, progress)]
    _write(index, json.dumps({"key": spec.key(), "images": [asdict(r) for r in records]}).encode())
    return records


def _progress(plans: list[_Plan], enabled: bool) -> Iterator[_Plan]:
    if not enabled:
        return iter(plans)
    from pipeline.core.base.progress import track  # a bar on a terminal, a line every few seconds in a log

    return track(plans, "drawing mirror images", "img")


def _load(index: Path, spec: Spec) -> list[ImageRecord] | None:
    """The cached records when ``index`` was made with the same spec and all its files are there."""
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return None
    if data.get("key") != json.loads(json.dumps(spec.key())):
        return None
    records = []
    for raw in data["images"]:
        raw["boxes"] = [BoxRecord(**b) for b in raw["boxes"]]
        records.append(ImageRecord(**raw))
    root = index.parent
    if not all((root / r.cvdf).exists() and (r.served is None or (root / r.served).exists()) for r in records):
        return None
    return records
