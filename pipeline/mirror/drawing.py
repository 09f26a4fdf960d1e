"""Pictures for the mirror: a varied background with food drawn exactly inside its boxes.

Each class has a distinct silhouette and palette (a stacked burger, a layered triangle sandwich, a
long sub roll, a hot dog, a pizza disc) so that a small CNN fine-tuned for a few epochs can tell them
apart; any other class gets a polygon whose shape and colour follow from its MID. Every object carries
an orientation marker, a blue square in its upright top-left corner, so a test can tell an upright
crop from a rotated one. Backgrounds avoid saturated blue so the marker stays unambiguous.
"""
from __future__ import annotations

import hashlib
import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive
Painter = Callable[[ImageDraw.ImageDraw, Box, np.random.Generator], None]

#: the orientation marker's colour; see :func:`draw_marker`
MARKER_RGB = (20, 60, 235)
#: the marker's side as a fraction of the box's shorter side
MARKER_FRACTION = 0.22

_NOISE_TILE = 128
_BACKGROUNDS = [  # warm and neutral tables, cloths and walls: never saturated blue
    ((222, 205, 180), (150, 110, 80)),
    ((245, 240, 230), (200, 190, 175)),
    ((120, 85, 60), (70, 45, 30)),
    ((200, 210, 200), (130, 150, 130)),
    ((235, 225, 170), (190, 160, 100)),
    ((180, 180, 185), (95, 95, 100)),
    ((240, 200, 200), (170, 120, 120)),
    ((215, 230, 215), (160, 175, 140)),
]


def background(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A vertical gradient, a few soft plates and crumbs, and sensor-like noise.

    The noise is one random tile repeated (at a random offset): drawing per-pixel noise for a
    1600x1200 picture took most of the generation time, and a 128 px period is invisible in it.
    """
    width, height = size
    top, bottom = (np.array(c, dtype=np.float32) for c in _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))])
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    gradient = (top * (1 - ramp) + bottom * ramp).astype(np.int16)
    tile = rng.normal(0.0, 6.0, size=(_NOISE_TILE, _NOISE_TILE, 3)).astype(np.int16)
    dy, dx = rng.integers(_NOISE_TILE, size=2)
    reps = (-(-(height + dy) // _NOISE_TILE), -(-(width + dx) // _NOISE_TILE), 1)
    noise = np.tile(tile, reps)[dy:dy + height, dx:dx + width]
    image = Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.08, 0.3) * min(width, height)
        shade = tuple(int(v) for v in rng.integers(150, 250, size=3))
        draw.ellipse((cx - r, cy - r * 0.8, cx + r, cy + r * 0.8), fill=_no_blue(shade))
    for _ in range(int(rng.integers(10, 40))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        s = rng.uniform(1, 4)
        draw.ellipse((x, y, x + s, y + s), fill=(int(rng.integers(60, 160)),) * 3)
    return image


def _no_blue(rgb: tuple[int, ...]) -> tuple[int, int, int]:
    r, g, b = rgb
    return r, g, min(b, max(r, g))


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)  # type: ignore[return-value]


def _rect(box: Box, fx0: float, fy0: float, fx1: float, fy1: float) -> tuple[float, float, float, float]:
    """A sub-rectangle of ``box`` given as fractions of its width and height."""
    (x0, y0), (x1, y1) = _pt(box, fx0, fy0), _pt(box, fx1, fy1)
    return x0, y0, x1, y1


def _pt(box: Box, fx: float, fy: float) -> tuple[float, float]:
    """A point of ``box`` given as fractions of its width and height (1.0 = last pixel)."""
    x0, y0, x1, y1 = box
    return x0 + fx * (x1 - x0 - 1), y0 + fy * (y1 - y0 - 1)


def _zigzag(box: Box, fx0: float, fx1: float, fy_peak: float, fy_valley: float, teeth: int) -> list[tuple[float, float]]:
    return [_pt(box, fx0 + (fx1 - fx0) * i / teeth, fy_peak if i % 2 else fy_valley) for i in range(teeth + 1)]


def _radius(box: Box, divisor: int) -> int:
    return max(2, (box[3] - box[1]) // divisor)


def hamburger(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Side view of stacked discs: domed bun with seeds, lettuce, cheese, patty, flat bun."""
    bun = _jitter((205, 135, 55), rng)
    draw.rounded_rectangle(_rect(box, 0.02, 0.78, 0.98, 1.0), radius=_radius(box, 12), fill=bun)
    draw.rounded_rectangle(_rect(box, 0.0, 0.52, 1.0, 0.78), radius=_radius(box, 10), fill=_jitter((85, 45, 25), rng, 10))
    draw.polygon([_pt(box, 0.0, 0.45), _pt(box, 1.0, 0.45), _pt(box, 0.85, 0.62), _pt(box, 0.15, 0.62)],
                 fill=(250, 200, 40))
    draw.polygon(_zigzag(box, 0.0, 1.0, 0.42, 0.52, 8) + [_pt(box, 1.0, 0.42), _pt(box, 0.0, 0.42)],
                 fill=_jitter((70, 170, 50), rng))
    draw.chord(_rect(box, 0.0, 0.0, 1.0, 0.9), 180, 360, fill=bun)
    seed = max(2, (box[2] - box[0]) // 30)
    for _ in range(12):
        x, y = _pt(box, rng.uniform(0.2, 0.75), rng.uniform(0.12, 0.35))
        draw.ellipse((x, y, x + 2 * seed, y + seed), fill=(250, 240, 210))


def _triangle(draw: ImageDraw.ImageDraw, box: Box, corners: tuple[tuple[float, float], ...], fill: tuple[int, ...]) -> None:
    draw.polygon([_pt(box, fx, fy) for fx, fy in corners], fill=fill)


def sandwich(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """Two bread triangles with coloured layers (ham, cheese, lettuce) between them."""
    crust, crumb = _jitter((170, 110, 55), rng), _jitter((240, 220, 175), rng, 10)
    _triangle(draw, box, ((0.0, 1.0), (1.0, 1.0), (0.0, 0.15)), crust)
    _triangle(draw, box, ((0.04, 0.96), (0.9, 0.96), (0.04, 0.25)), crumb)
    for i, colour in enumerate([(235, 140, 150), (250, 215, 60), (90, 185, 60)]):
        d = 0.06 * (i + 1)
        _triangle(draw, box, ((d, 0.9 - d), (1.0, 0.9 - d), (d, 0.05 + d)), _jitter(colour, rng, 10))
    _triangle(draw, box, ((0.3, 0.7), (1.0, 0.7), (0.3, 0.0)), crust)
    _triangle(draw, box, ((0.33, 0.66), (0.9, 0.66), (0.33, 0.1)), crumb)


def submarine_sandwich(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A long roll split open: bread top and bottom, lettuce zigzag, tomato slices, meat."""
    bread = _jitter((215, 160, 85), rng)
    draw.rounded_rectangle(_rect(box, 0.0, 0.55, 1.0, 1.0), radius=_radius(box, 3), fill=bread)
    draw.rectangle(_rect(box, 0.03, 0.45, 0.97, 0.62), fill=_jitter((230, 120, 130), rng, 10))
    draw.polygon(_zigzag(box, 0.02, 0.98, 0.36, 0.5, 14) + [_pt(box, 0.98, 0.52), _pt(box, 0.02, 0.52)],
                 fill=_jitter((80, 180, 50), rng))
    for i in range(5):
        draw.ellipse(_rect(box, 0.08 + i * 0.18, 0.38, 0.2 + i * 0.18, 0.58), fill=(215, 40, 35))
    draw.rounded_rectangle(_rect(box, 0.0, 0.0, 1.0, 0.42), radius=_radius(box, 3), fill=bread)


def hot_dog(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A red-brown sausage longer than its pale bun, with a yellow mustard zigzag."""
    draw.rounded_rectangle(_rect(box, 0.06, 0.35, 0.94, 1.0), radius=_radius(box, 3), fill=_jitter((235, 195, 130), rng))
    draw.rounded_rectangle(_rect(box, 0.0, 0.2, 1.0, 0.65), radius=_radius(box, 5), fill=_jitter((165, 55, 35), rng, 10))
    draw.line(_zigzag(box, 0.1, 0.9, 0.3, 0.5, 10), fill=(250, 215, 20), width=_radius(box, 14))


def pizza(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
    """A round pie: crust ring, cheese, pepperoni and basil dots."""
    draw.ellipse(_rect(box, 0, 0, 1, 1), fill=_jitter((195, 135, 60), rng))
    draw.ellipse(_rect(box, 0.08, 0.08, 0.92, 0.92), fill=_jitter((248, 205, 95), rng, 10))
    for _ in range(7):
        angle, dist = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.28)
        cx, cy = 0.5 + dist * np.cos(angle), 0.5 + dist * np.sin(angle)
        draw.ellipse(_rect(box, cx - 0.07, cy - 0.07, cx + 0.07, cy + 0.07), fill=(175, 35, 30))
    for _ in range(5):
        cx, cy = rng.uniform(0.25, 0.75, size=2)
        draw.ellipse(_rect(box, cx - 0.025, cy - 0.025, cx + 0.025, cy + 0.025), fill=(40, 120, 40))


def other(mid: str) -> Painter:
    """Any other class: a polygon whose side count and colour follow from the MID."""
    digest = hashlib.sha256(mid.encode()).digest()
    sides, colour = 3 + digest[0] % 5, _no_blue((digest[1], digest[2], digest[3]))

    def paint(draw: ImageDraw.ImageDraw, box: Box, rng: np.random.Generator) -> None:
        angles = np.linspace(0, 2 * np.pi, sides, endpoint=False) + digest[4] / 255
        points = [_pt(box, 0.5 + 0.5 * np.cos(a), 0.5 + 0.5 * np.sin(a)) for a in angles]
        draw.polygon(points, fill=_jitter(colour, rng, 10), outline=(30, 30, 30))

    return paint


PAINTERS: dict[str, Painter] = {
    "/m/0cdn1": hamburger,
    "/m/0l515": sandwich,
    "/m/06pcq": submarine_sandwich,
    "/m/01b9xk": hot_dog,
    "/m/0663v": pizza,
}

#: width / height range of a box, per class: subs and hot dogs are long, pizzas round
ASPECT: dict[str, tuple[float, float]] = {
    "/m/0cdn1": (1.0, 1.4),
    "/m/0l515": (0.9, 1.3),
    "/m/06pcq": (2.2, 3.2),
    "/m/01b9xk": (2.0, 2.8),
    "/m/0663v": (0.95, 1.05),
}


def draw_marker(draw: ImageDraw.ImageDraw, box: Box) -> None:
    """The orientation marker: a blue square in the object's upright top-left corner."""
    x0, y0, x1, y1 = box
    side = max(3, int(MARKER_FRACTION * min(x1 - x0, y1 - y0)))
    draw.rectangle((x0, y0, x0 + side - 1, y0 + side - 1), fill=MARKER_RGB)


def draw_object(image: Image.Image, mid: str, box: Box, rng: np.random.Generator) -> None:
    """Paint one object of class ``mid`` so that it fills ``box`` (tight box), plus its marker."""
    draw = ImageDraw.Draw(image)
    PAINTERS.get(mid, other(mid))(draw, box, rng)
    draw_marker(draw, box)


def placeholder_png() -> bytes:
    """A look-alike of Flickr's 500x374 grey "This photo is no longer available" PNG."""
    image = Image.new("P", (500, 374), 0)
    image.putpalette([238, 238, 238, 153, 153, 153, 200, 200, 200] + [0] * 759)
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((205, 110, 295, 190), radius=10, outline=1, width=4)  # a camera body
    draw.ellipse((228, 128, 272, 172), outline=1, width=4)
    draw.rectangle((225, 100, 250, 110), fill=1)
    draw.line((200, 200, 300, 100), fill=2, width=6)  # struck through
    text = "This photo is no longer available"
    width = draw.textlength(text)
    draw.text(((500 - width) / 2, 225), text, fill=1)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
