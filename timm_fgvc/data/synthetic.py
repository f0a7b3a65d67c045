"""Embedded, deterministic, synthetic fine-grained visual classification data.

``timm_fgvc`` ships its own tiny fine-grained dataset so that training, tests and
benchmarks run without any download.  Every image is generated on the fly by
:func:`render_sample` from an RNG seeded with ``(seed, split, index)``, so any
sample can be (re)generated independently, on any machine, byte for byte.

Generation scheme
-----------------
Each image shows one *object* on a cluttered background:

* **Body** (nuisance): a filled ellipse whose colour is drawn from a palette
  shared by *all* classes and whose aspect ratio is jittered.  The object is
  placed at a random position (always fully inside the frame), scaled by a
  random factor in ``[0.7, 1.3]`` and rotated by a uniform random angle.
* **Parts** (the only class signal): two small markers sit on the body's major
  axis and move/scale/rotate rigidly with it -- a round *head* (black/white,
  near one end) and a square *tail* (navy/yellow, near the other end), each about
  12% of the image side across at scale 1.  Their different outline and colour
  pair tell head and tail apart, so the object's 180-degree symmetry does not
  make classes ambiguous.  Each part is filled with one of
  ``len(PART_PATTERNS)`` binary fine patterns (stripes, a dot, a checker,
  halves, a bullseye, ...).  With ``k = ceil(sqrt(num_classes))`` patterns per
  part, class ``c`` is the pair (head pattern ``c % k``, tail pattern
  ``c // k``), so *both* parts are needed to tell every class apart.  Every
  pattern covers exactly half of its part (its threshold is the median of the
  pattern field inside the part shape), so a part's mean colour is the same for
  all classes: after a heavy blur the parts become class-independent
  grey/olive smudges and the class cannot be recovered.
* **Background** (nuisance): a random base colour with a smooth low-frequency
  colour field, distractor blobs (ellipses), distractor lines, and 0-2
  part-sized distractor patches with a random 3x3 cell pattern in body-palette
  colours (never the part colour pairs or the part patterns).  Distractors are
  drawn below the object, so parts are never occluded.  Finally i.i.d. pixel
  noise is added.

Ground truth kept per image: ``part_boxes`` -- ``[[x0, y0, x1, y1], ...]`` for
(head, tail), the tight axis-aligned pixel boxes (after rotation) around every
pixel the part touches (``x1``/``y1`` exclusive, i.e. the box of pixel columns
``x0 .. x1-1``), and ``object_box``, the same for the whole object (body and
parts).  Rendering is 2x supersampled and box-filtered, all in numpy.
"""

from __future__ import annotations

import functools
import math
import zlib
from typing import Callable

import numpy as np
from PIL import Image

__all__ = [
    "SYNTHETIC_NAME",
    "PART_NAMES",
    "PART_PATTERNS",
    "MAX_SYNTHETIC_CLASSES",
    "synthetic_class_names",
    "synthetic_class_parts",
    "render_sample",
    "make_synthetic_fgvc",
]

SYNTHETIC_NAME = "synthetic"
PART_NAMES = ("head", "tail")

_SS = 2  # supersampling factor per axis

# ---------------------------------------------------------------------------
# Part patterns.  Each maps local part coordinates (u, v) in [-1, 1]^2 (the part
# shape is the unit disc / unit square) to a scalar field; the binary pattern is
# ``field > median(field over the part shape)``, i.e. exactly 50% fill.
# Ordered so that the first few (used for small num_classes) are the most
# distinct.
# ---------------------------------------------------------------------------


def _rho(u, v):
    return np.sqrt(u * u + v * v)


def _min_dist(u, v, pts):
    d = None
    for px, py in pts:
        di = (u - px) ** 2 + (v - py) ** 2
        d = di if d is None else np.minimum(d, di)
    return -d


PART_PATTERNS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "stripes": lambda u, v: np.cos(2.0 * math.pi * u),  # 2 periods across
    "dot": lambda u, v: -_rho(u, v),
    "checker": lambda u, v: np.cos(2.0 * math.pi * u) * np.cos(2.0 * math.pi * v),  # 4x4
    "halves": lambda u, v: u + 0.0 * v,
    "bullseye": lambda u, v: np.cos(3.0 * math.pi * _rho(u, v)),
    "quadrants": lambda u, v: u * v,
    "plus": lambda u, v: -np.minimum(np.abs(u), np.abs(v)),
    "fourdots": lambda u, v: _min_dist(u, v, [(-0.5, -0.5), (-0.5, 0.5), (0.5, -0.5), (0.5, 0.5)]),
    "ring": lambda u, v: -np.abs(_rho(u, v) - 0.6),
    "xcross": lambda u, v: -np.minimum(np.abs(u - v), np.abs(u + v)),
    "ninedots": lambda u, v: _min_dist(u, v, [(a, b) for a in (-0.67, 0.0, 0.67) for b in (-0.67, 0.0, 0.67)]),
    "chevron": lambda u, v: np.cos(2.0 * math.pi * (v - np.abs(u))),
}
_PATTERN_LIST = list(PART_PATTERNS)
MAX_SYNTHETIC_CLASSES = len(_PATTERN_LIST) ** 2

# Part shapes and colour pairs (RGB in [0, 1]); the same for every class.
_PART_SHAPES = ("disc", "square")
_PART_COLORS = (
    ((0.06, 0.06, 0.06), (0.97, 0.97, 0.97)),  # head: black / white
    ((0.10, 0.12, 0.45), (0.98, 0.84, 0.15)),  # tail: navy / yellow
)

# Body palette, shared by all classes (mid saturation, contrasts with parts).
_BODY_PALETTE = np.array(
    [
        (0.80, 0.35, 0.30),
        (0.35, 0.65, 0.35),
        (0.35, 0.50, 0.80),
        (0.75, 0.55, 0.25),
        (0.60, 0.40, 0.70),
        (0.30, 0.65, 0.65),
        (0.85, 0.55, 0.60),
        (0.55, 0.55, 0.55),
    ],
    dtype=np.float32,
)

# Geometry, as fractions of the image side at object scale 1.
_BODY_A = 0.22  # semi-major axis
_BODY_B_RANGE = (0.50, 0.62)  # semi-minor / semi-major
_PART_R = 0.06  # part "radius" (disc radius = square half-side): 12% of the side across
_PART_OFFSET = 0.65  # part centre along the major axis, in units of semi-major axis
_SCALE_RANGE = (0.7, 1.3)
# Numbers of background distractors, as [low, high) ranges.
_N_BLOBS = (3, 7)
_N_LINES = (1, 4)
_N_PATCHES = (0, 3)


def _split_key(split: str) -> int:
    return zlib.crc32(str(split).encode("utf-8"))


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, _split_key(split), int(index)])


def _grid_size(num_classes: int) -> int:
    if not 2 <= num_classes <= MAX_SYNTHETIC_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_SYNTHETIC_CLASSES}], got {num_classes}")
    return int(math.ceil(math.sqrt(num_classes)))


def synthetic_class_parts(num_classes: int) -> list[tuple[str, str]]:
    """(head pattern, tail pattern) for every class."""
    k = _grid_size(num_classes)
    return [(_PATTERN_LIST[c % k], _PATTERN_LIST[c // k]) for c in range(num_classes)]


def synthetic_class_names(num_classes: int) -> list[str]:
    """Human readable, unique class names, e.g. ``'c03_head-halves_tail-stripes'``."""
    return [f"c{c:02d}_head-{h}_tail-{t}" for c, (h, t) in enumerate(synthetic_class_parts(num_classes))]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    if shape == "disc":
        return u * u + v * v <= 1.0
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


@functools.lru_cache(maxsize=None)
def _pattern_threshold(pattern: str, shape: str) -> float:
    t = (np.arange(401) + 0.5) / 401 * 2.0 - 1.0
    u, v = np.meshgrid(t, t, indexing="xy")
    inside = _shape_mask(shape, u, v)
    return float(np.median(PART_PATTERNS[pattern](u, v)[inside]))


# ---------------------------------------------------------------------------
# Drawing helpers (supersampled canvas, float32 RGB in [0, 1]).
# ---------------------------------------------------------------------------


class _Canvas:
    def __init__(self, size: int, ss: int = _SS):
        self.size = size
        self.ss = ss
        self.n = size * ss
        self.coord = ((np.arange(self.n, dtype=np.float32) + 0.5) / ss)  # pixel units
        self.rgb = np.zeros((self.n, self.n, 3), dtype=np.float32)

    def window(self, cx: float, cy: float, rad: float):
        """Slices and local coordinates (x, y relative to the centre) of the
        supersampled pixels within ``rad`` of (cx, cy); None if empty."""
        lo_x = max(int(math.floor((cx - rad) * self.ss)), 0)
        hi_x = min(int(math.ceil((cx + rad) * self.ss)) + 1, self.n)
        lo_y = max(int(math.floor((cy - rad) * self.ss)), 0)
        hi_y = min(int(math.ceil((cy + rad) * self.ss)) + 1, self.n)
        if lo_x >= hi_x or lo_y >= hi_y:
            return None
        dx = self.coord[lo_x:hi_x][None, :] - cx
        dy = self.coord[lo_y:hi_y][:, None] - cy
        return (slice(lo_y, hi_y), slice(lo_x, hi_x)), dx, dy

    def paint(self, sl, mask: np.ndarray, color) -> None:
        region = self.rgb[sl]
        region[mask] = np.asarray(color, dtype=np.float32)

    def downsample(self) -> np.ndarray:
        s = self.ss
        out = np.zeros((self.size, self.size, 3), dtype=np.float32)
        for i in range(s):
            for j in range(s):
                out += self.rgb[i::s, j::s]
        out *= 1.0 / (s * s)
        return out


def _rotated(dx, dy, theta):
    c, s = math.cos(theta), math.sin(theta)
    # local frame: u along the rotated major axis
    return dx * c + dy * s, -dx * s + dy * c


def _ellipse(canvas: _Canvas, cx, cy, a, b, theta, color, want_box: bool = False):
    """Paint a filled rotated ellipse; returns its pixel box if ``want_box``."""
    win = canvas.window(cx, cy, max(a, b) + 1.0)
    if win is None:
        return None
    sl, dx, dy = win
    u, v = _rotated(dx, dy, theta)
    mask = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    canvas.paint(sl, mask, color)
    return _mask_box(mask, canvas.ss, sl) if want_box else None


def _line(canvas: _Canvas, x0, y0, x1, y1, width, color):
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    half = 0.5 * math.hypot(x1 - x0, y1 - y0)
    theta = math.atan2(y1 - y0, x1 - x0)
    win = canvas.window(cx, cy, half + width + 1.0)
    if win is None:
        return
    sl, dx, dy = win
    u, v = _rotated(dx, dy, theta)
    mask = (np.abs(u) <= half) & (np.abs(v) <= 0.5 * width)
    canvas.paint(sl, mask, color)


def _lowfreq_field(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random colour field (size*ss, size*ss, 3) by bilinear upsampling."""
    g = rng.normal(0.0, amp, size=(cells, cells, 3)).astype(np.float32)
    pos = np.linspace(0.0, cells - 1.0, size, dtype=np.float32)
    i0 = np.clip(np.floor(pos).astype(int), 0, cells - 2)
    w = pos - i0
    W = np.zeros((size, cells), dtype=np.float32)
    W[np.arange(size), i0] = 1.0 - w
    W[np.arange(size), i0 + 1] = w
    tmp = np.tensordot(W, g, axes=(1, 0))  # (size, cells, 3)
    return np.stack([tmp[:, :, c] @ W.T for c in range(3)], axis=-1)


def _mask_box(mask_ss: np.ndarray, ss: int, sl=None) -> list[float]:
    """Tight pixel box [x0, y0, x1, y1] (x1/y1 exclusive) of a supersampled mask
    (``sl``: the window slices the mask lives in, default the whole canvas)."""
    oy, ox = (0, 0) if sl is None else (sl[0].start, sl[1].start)
    rows = np.flatnonzero(mask_ss.any(axis=1))
    cols = np.flatnonzero(mask_ss.any(axis=0))
    if rows.size == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [
        float((cols[0] + ox) // ss),
        float((rows[0] + oy) // ss),
        float((cols[-1] + ox) // ss + 1),
        float((rows[-1] + oy) // ss + 1),
    ]


def _union_box(boxes: list[list[float]]) -> list[float]:
    return [
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    ]


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


def render_sample(
    index: int,
    *,
    num_classes: int = 10,
    image_size: int = 128,
    seed: int = 0,
    split: str = "train",
    _draw_parts: bool = True,
    _return_meta: bool = False,
) -> dict:
    """Render synthetic sample ``index`` of ``split``; label is ``index % num_classes``.

    Returns ``{'image': PIL RGB image_size x image_size, 'label': int,
    'part_boxes': [[x0, y0, x1, y1] for head, tail], 'object_box': [x0, y0, x1, y1]}``
    (pixel coordinates, x1/y1 exclusive).  ``_draw_parts=False`` renders the very
    same image without the part markers (the RNG stream is unchanged), for tests.
    ``_return_meta=True`` adds a ``'meta'`` dict with the nuisance parameters.
    """
    k = _grid_size(num_classes)
    S = int(image_size)
    if S < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    label = int(index) % num_classes
    patterns = (_PATTERN_LIST[label % k], _PATTERN_LIST[label // k])
    rng = _sample_rng(seed, split, index)
    cv = _Canvas(S)

    # --- nuisance parameters of the object (drawn first, fixed order) ---
    scale = float(rng.uniform(*_SCALE_RANGE))
    theta = float(rng.uniform(0.0, 2.0 * math.pi))
    a = _BODY_A * S * scale
    b = a * float(rng.uniform(*_BODY_B_RANGE))
    margin = a + 1.0
    cx = float(rng.uniform(margin, S - margin))
    cy = float(rng.uniform(margin, S - margin))
    body_color = _BODY_PALETTE[rng.integers(len(_BODY_PALETTE))] + rng.normal(0, 0.03, 3).astype(np.float32)
    part_jitter = rng.uniform(-0.05, 0.05, size=2)
    part_color_jitter = rng.normal(0.0, 0.02, size=(2, 2, 3))

    # --- background ---
    base = rng.uniform(0.25, 0.75, size=3).astype(np.float32)
    cv.rgb = _lowfreq_field(rng, cv.n, 5, 0.10)
    cv.rgb += base

    # distractor blobs
    for _ in range(int(rng.integers(*_N_BLOBS))):
        r1 = float(rng.uniform(0.03, 0.11)) * S
        r2 = r1 * float(rng.uniform(0.4, 1.0))
        _ellipse(
            cv, float(rng.uniform(0, S)), float(rng.uniform(0, S)), r1, r2,
            float(rng.uniform(0, math.pi)), rng.uniform(0.05, 0.95, size=3),
        )
    # distractor lines
    for _ in range(int(rng.integers(*_N_LINES))):
        x0, y0, x1, y1 = rng.uniform(0, S, size=4)
        _line(cv, x0, y0, x1, y1, float(rng.uniform(0.8, 2.5)) * S / 128.0, rng.uniform(0.05, 0.95, size=3))
    # part-sized distractor patches: random 3x3 cell pattern in body-palette colours
    for _ in range(int(rng.integers(*_N_PATCHES))):
        pr = _PART_R * S * float(rng.uniform(*_SCALE_RANGE))
        px, py = rng.uniform(pr, S - pr, size=2)
        pth = float(rng.uniform(0, 2 * math.pi))
        cells = rng.integers(0, 2, size=(3, 3)).astype(bool)
        c0, c1 = rng.choice(len(_BODY_PALETTE), size=2, replace=False)
        win = cv.window(px, py, pr * 1.5 + 1.0)
        if win is not None:
            sl, dx, dy = win
            u, v = _rotated(dx, dy, pth)
            u, v = u / pr, v / pr
            inside = np.maximum(np.abs(u), np.abs(v)) <= 1.0
            iu = np.clip(((u + 1.0) * 1.5).astype(int), 0, 2)
            iv = np.clip(((v + 1.0) * 1.5).astype(int), 0, 2)
            on = cells[iv, iu]
            cv.paint(sl, inside & on, _BODY_PALETTE[c1])
            cv.paint(sl, inside & ~on, _BODY_PALETTE[c0])

    # --- object body ---
    body_box = _ellipse(cv, cx, cy, a, b, theta, np.clip(body_color, 0, 1), want_box=True)

    # --- parts ---
    pr = _PART_R * S * scale
    part_boxes = []
    ct, st = math.cos(theta), math.sin(theta)
    for p, (shape, pattern, sign) in enumerate(zip(_PART_SHAPES, patterns, (1.0, -1.0))):
        off = sign * (_PART_OFFSET + part_jitter[p]) * a
        px, py = cx + off * ct, cy + off * st
        win = cv.window(px, py, pr * 1.5 + 1.0)
        sl, dx, dy = win
        u, v = _rotated(dx, dy, theta)
        u, v = u / pr, v / pr
        inside = _shape_mask(shape, u, v)
        on = PART_PATTERNS[pattern](u, v) > _pattern_threshold(pattern, shape)
        if _draw_parts:
            col0 = np.clip(np.asarray(_PART_COLORS[p][0]) + part_color_jitter[p, 0], 0, 1)
            col1 = np.clip(np.asarray(_PART_COLORS[p][1]) + part_color_jitter[p, 1], 0, 1)
            cv.paint(sl, inside & on, col1)
            cv.paint(sl, inside & ~on, col0)
        part_boxes.append(_mask_box(inside, cv.ss, sl))

    # --- finish: downsample, pixel noise, quantise ---
    img = cv.downsample()
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(0.025)
    img *= np.float32(255.0)
    np.rint(img, out=img)
    arr = np.clip(img, 0, 255).astype(np.uint8)
    out = {
        "image": Image.fromarray(arr),
        "label": label,
        "part_boxes": part_boxes,
        "object_box": _union_box([body_box] + part_boxes),
    }
    if _return_meta:
        out["meta"] = {
            "center": (cx, cy),
            "scale": scale,
            "theta": theta,
            "patterns": patterns,
            "part_radius": pr,
        }
    return out


def _features(num_classes: int):
    import datasets

    seq = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=synthetic_class_names(num_classes)),
            "part_boxes": seq(seq(datasets.Value("float32"))),
            "object_box": seq(datasets.Value("float32")),
        }
    )


def _make_split(num_classes: int, n: int, image_size: int, seed: int, split: str, features):
    import datasets

    cols: dict[str, list] = {"image": [], "label": [], "part_boxes": [], "object_box": []}
    for i in range(n):
        s = render_sample(i, num_classes=num_classes, image_size=image_size, seed=seed, split=split)
        for key in cols:
            cols[key].append(s[key])
    return datasets.Dataset.from_dict(cols, features=features, split=datasets.NamedSplit(split))


def make_synthetic_fgvc(
    num_classes: int = 10,
    train_per_class: int = 40,
    test_per_class: int = 10,
    image_size: int = 128,
    seed: int = 0,
):
    """Build the synthetic FGVC set in memory (no cache files, no downloads).

    Returns a ``datasets.DatasetDict`` with splits ``'train'`` and ``'test'``;
    columns ``image`` (``datasets.Image``), ``label`` (``datasets.ClassLabel`` with
    :func:`synthetic_class_names`), ``part_boxes`` (list of ``[x0, y0, x1, y1]``,
    head then tail) and ``object_box``.  Sample ``i`` of a split has label
    ``i % num_classes`` (classes are exactly balanced) and is
    ``render_sample(i, split=<split>, ...)``.
    """
    import datasets

    _grid_size(num_classes)
    features = _features(num_classes)
    return datasets.DatasetDict(
        {
            "train": _make_split(num_classes, num_classes * train_per_class, image_size, seed, "train", features),
            "test": _make_split(num_classes, num_classes * test_per_class, image_size, seed, "test", features),
        }
    )
