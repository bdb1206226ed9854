"""Pathfinder (Linsley et al., NeurIPS 2018; LRA's Pathfinder-32 and Path-X = 128): is there a path between the
two circular markers? A grayscale image of dashed contours, read as ``resolution**2`` pixel tokens (0..255).

Two sources:

1. **The released folders** (:func:`read_pathfinder_folder`): ``pathfinderNN/<condition>/imgs/<k>/sample_<i>.png``
   with ``pathfinderNN/<condition>/metadata/<k>.npy``, which despite its name is text: one line per image,
   whitespace-separated fields ``folder file index label ...`` (the rest are generator parameters). LRA and
   later papers use the hard condition ``curv_contour_length_14``, 32 x 32 (``pathfinder32``) and 128 x 128
   (``pathfinder128``, Path-X). One released image is empty (``pathfinder32/curv_baseline/imgs/0/sample_172.png``)
   and is skipped. The examples are cut 80/10/10 by a seeded permutation (:func:`split_indices`), with the
   same arithmetic as ``torch.utils.data.random_split`` in S4's loader (seed 42 there, our default too).
2. **A seeded generator** (:func:`generate_pathfinder`) written from the description of Linsley et al.'s
   ``snakes2.py``, so the task runs with no download. How it differs is in ``README.md`` beside this file.

The generator draws ``2 + num_distractors`` contours of ``contour_length`` paddles each (short straight strokes
separated by gaps, the direction turning by at most ``max_turn`` degrees from one paddle to the next), keeps
every contour at least ``clearance`` pixels from the others, and puts the two markers on the two ends of
contour 0 (label 1, connected) or on one end of contour 0 and one end of contour 1 (label 0). Every image has
the same number of contours and markers whatever its label, so only following a contour tells them apart.
Drawing is at ``supersample`` times the resolution, then box-filtered down (grey anti-aliased edges, as in the
released images). Geometry is given in output pixels at resolution 32 and scales with the resolution.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...common import ConfigError
from ._common import LRA_RELEASE, require_dir

EMPTY_IMAGES = frozenset({"pathfinder32/curv_baseline/imgs/0/sample_172.png"})  # the known empty release file
CONDITIONS = ("curv_baseline", "curv_contour_length_9", "curv_contour_length_14")
HOW_TO_GET = (f"Point task.data_dir at a pathfinderNN folder (pathfinder32 for lra_pathfinder, pathfinder128 for "
              f"lra_pathx) of {LRA_RELEASE}, holding <condition>/metadata/*.npy and <condition>/imgs/; or leave "
              f"task.data_dir null to generate Pathfinder-style images")


# --------------------------------------------------------------------------------------------------------------
# the released folders
# --------------------------------------------------------------------------------------------------------------

def read_metadata_lines(path: Path) -> list[tuple[str, str, int]]:
    """``(folder, file, label)`` of each line of one metadata file."""
    out = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 4:
            raise ValueError(f"Pathfinder metadata {str(path)!r} line {line_no}: expected at least 4 fields "
                             f"(folder, file, index, label, ...), got {len(fields)}")
        label = int(fields[3])
        if label not in (0, 1):
            raise ValueError(f"Pathfinder metadata {str(path)!r} line {line_no}: label {label}, expected 0 or 1")
        out.append((fields[0], fields[1], label))
    return out


def read_pathfinder_folder(root: str | Path, condition: str = "curv_contour_length_14",
                           resolution: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``root/condition`` listed by its metadata files (sorted by number, lines in order), as
    ``(pixels uint8 [N, H*W], labels int64 [N])``. Images are read in grayscale; the known empty image is
    skipped. ``resolution`` checks the image size."""
    from PIL import Image

    root = require_dir(Path(root), "task.data_dir", HOW_TO_GET)
    meta_dir = require_dir(root / condition / "metadata", f"Pathfinder condition {condition!r}", HOW_TO_GET)
    files = sorted(meta_dir.glob("*.npy"), key=lambda p: int(p.stem) if p.stem.isdigit() else math.inf)
    if not files:
        raise ConfigError(f"Pathfinder: no metadata files (*.npy) in {str(meta_dir)!r}. {HOW_TO_GET}")
    pixels, labels = [], []
    for meta in files:
        for folder, name, label in read_metadata_lines(meta):
            rel = f"{root.name}/{condition}/{folder}/{name}"
            if rel in EMPTY_IMAGES:
                continue
            path = root / condition / folder / name
            try:
                with Image.open(path) as img:
                    arr = np.asarray(img.convert("L"), dtype=np.uint8)
            except (OSError, ValueError) as e:
                raise ValueError(f"Pathfinder: cannot read image {str(path)!r} (listed in {str(meta)!r}): {e}") from e
            if resolution is not None and arr.shape != (resolution, resolution):
                raise ValueError(f"Pathfinder: image {str(path)!r} is {arr.shape[1]}x{arr.shape[0]}, expected "
                                 f"{resolution}x{resolution} (task.resolution)")
            pixels.append(arr.reshape(-1))
            labels.append(label)
    if not pixels:
        raise ConfigError(f"Pathfinder: the metadata in {str(meta_dir)!r} lists no images")
    return np.stack(pixels), np.asarray(labels, dtype=np.int64)


def split_indices(n: int, seed: int, valid_fraction: float = 0.1, test_fraction: float = 0.1) -> dict:
    """Train / valid / test example indices: a seeded permutation cut as ``torch.utils.data.random_split(
    range(n), [n - v - t, v, t], generator=torch.Generator().manual_seed(seed))`` with ``v = int(0.1 n)``,
    ``t = int(0.1 n)`` cuts it (S4's Pathfinder split)."""
    import torch

    v, t = int(valid_fraction * n), int(test_fraction * n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).numpy()
    return {"train": perm[: n - v - t], "valid": perm[n - v - t: n - t], "test": perm[n - t:]}


# --------------------------------------------------------------------------------------------------------------
# the generator
# --------------------------------------------------------------------------------------------------------------

@dataclass
class PathfinderGeometry:
    """What one generated image looks like. Lengths are output pixels at resolution 32 (scaled by
    ``resolution / 32``); angles are degrees."""

    resolution: int = 32
    contour_length: int = 14  # paddles per contour (the release's conditions: 6, 9, 14)
    num_distractors: int = 1  # contours besides the one or two that carry the markers
    paddle_length: float = 1.0  # one dash
    gap: float = 0.75  # space between consecutive dashes
    thickness: float = 1.0  # stroke width
    marker_radius: float = 1.5
    max_turn: float = 45.0  # largest change of direction between consecutive paddles
    clearance: float = 2.0  # least distance between the centre lines of two contours (> gap: no false link)
    supersample: int = 4  # drawing resolution multiple, box-filtered down

    def validate(self, prefix: str = "") -> None:
        for name in ("resolution", "contour_length", "supersample"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{prefix}{name}: expected a positive integer, got {v!r}")
        if self.resolution < 16:
            raise ConfigError(f"{prefix}resolution: expected at least 16 pixels, got {self.resolution}")
        if not isinstance(self.num_distractors, int) or self.num_distractors < 0:
            raise ConfigError(f"{prefix}num_distractors: expected an integer >= 0, got {self.num_distractors!r}")
        for name in ("paddle_length", "gap", "thickness", "marker_radius", "clearance"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{prefix}{name}: expected a positive number, got {getattr(self, name)!r}")
        if not 0 <= self.max_turn < 180:
            raise ConfigError(f"{prefix}max_turn: expected degrees in [0, 180), got {self.max_turn!r}")
        if self.clearance <= self.gap + self.thickness:
            raise ConfigError(f"{prefix}clearance: {self.clearance} must exceed gap + thickness "
                              f"({self.gap + self.thickness}), or two contours could look like one")


@dataclass
class PathfinderSample:
    """One generated image and how it was made (for tests and inspection)."""

    image: np.ndarray  # uint8 [resolution, resolution]
    label: int  # 1: the markers are the two ends of one contour
    contours: list = field(default_factory=list)  # per contour: float [contour_length, 2, 2] paddle end points (x, y)
    markers: list = field(default_factory=list)  # [(contour index, end 0|1)] x 2


def _segment_points(a: np.ndarray, b: np.ndarray, step: float) -> np.ndarray:
    n = max(2, int(math.ceil(np.linalg.norm(b - a) / step)) + 1)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return a[None] * (1 - t) + b[None] * t  # [n, 2]


class _Occupancy:
    """Where a new paddle may not go: a boolean grid (``cells`` per output pixel) in which every accepted paddle
    is stamped as a capsule of radius ``clearance``. A lookup per sample point replaces distance computations."""

    def __init__(self, size: float, clearance: float, cells: int = 2):
        self.cells = cells
        self.n = int(math.ceil(size * cells)) + 1
        self.grid = np.zeros((self.n, self.n), dtype=bool)
        r = int(math.ceil(clearance * cells))
        dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
        keep = (dx**2 + dy**2) <= (clearance * cells) ** 2
        self.disc = np.stack([dx[keep], dy[keep]], axis=1)  # [K, 2] cell offsets within the clearance

    def stamp(self, points: np.ndarray) -> None:
        idx = np.round(points * self.cells).astype(np.int64)  # [P, 2] (x, y) cells
        cells = (idx[:, None, :] + self.disc[None]).reshape(-1, 2)
        cells = cells[((cells >= 0) & (cells < self.n)).all(1)]
        self.grid[cells[:, 1], cells[:, 0]] = True

    def hits(self, points: np.ndarray) -> np.ndarray:
        """``points [..., P, 2]`` -> bool ``[...]``: does any point fall on a stamped cell."""
        idx = np.clip(np.round(points * self.cells).astype(np.int64), 0, self.n - 1)
        return self.grid[idx[..., 1], idx[..., 0]].any(-1)


def _grow_contour(rng: np.random.Generator, g: PathfinderGeometry, scale: float, occupied: _Occupancy,
                  tries: int = 10, turn_tries: int = 8, backtracks: int = 30) -> np.ndarray | None:
    """One contour (``[contour_length, 2, 2]`` paddle end points) that stays inside the border, off the
    ``occupied`` cells (the other contours and their clearance) and off itself, or None after ``tries`` starts.
    A paddle that is blocked tries ``turn_tries`` other turns at once; when all are blocked the previous paddle
    is taken back and redrawn (up to ``backtracks`` times per start), so a contour that meets an obstacle bends
    away instead of being thrown away whole."""
    size = g.resolution
    paddle, gap = g.paddle_length * scale, g.gap * scale
    border = (g.marker_radius + g.thickness) * scale
    clearance = g.clearance * scale
    turn = math.radians(g.max_turn)
    n_pts = max(2, int(math.ceil(paddle / (0.5 * scale))) + 1)
    t = np.linspace(0.0, 1.0, n_pts)[None, :, None]  # [1, n, 1]
    for _ in range(tries):
        start = rng.uniform(border, size - border, size=2)
        # head roughly toward the middle (within 90 degrees of it), else a long contour starting near the border
        # almost always runs out of the image
        to_centre = math.atan2(size / 2 - start[1], size / 2 - start[0])
        # per accepted paddle: (start point, direction, end point, sample points [n, 2])
        stack: list[tuple[np.ndarray, float, np.ndarray, np.ndarray]] = []
        budget = backtracks
        first_theta = to_centre + rng.uniform(-math.pi / 2, math.pi / 2)
        while len(stack) < g.contour_length:
            if stack:
                a0, theta0, b0, _ = stack[-1]
                p = b0 + gap * np.array([math.cos(theta0), math.sin(theta0)])
                thetas = theta0 + rng.uniform(-turn, turn, size=turn_tries)  # [C]
            else:
                p, thetas = start, np.array([first_theta])
            d = np.stack([np.cos(thetas), np.sin(thetas)], axis=1)  # [C, 2]
            b = p[None] + paddle * d  # [C, 2]
            pts = p[None, None] * (1 - t) + b[:, None] * t  # [C, n, 2]
            blocked = ((pts < border) | (pts > size - border)).any((1, 2)) | occupied.hits(pts)
            if len(stack) > 2:  # not back onto itself (its last two paddles are neighbours, not obstacles)
                older = np.concatenate([q for *_, q in stack[:-2]])  # [M, 2]
                dist = np.linalg.norm(pts[:, :, None] - older[None, None], axis=-1)  # [C, n, M]
                blocked |= dist.min((1, 2)) < clearance
            free = np.flatnonzero(~blocked)
            if len(free):
                c = free[0]
                stack.append((p, float(thetas[c]), b[c], pts[c]))
                continue
            if not stack or budget == 0:
                break
            budget -= 1
            stack.pop()  # take the last paddle back and draw it again (its predecessor's turn is kept)
        if len(stack) == g.contour_length:
            return np.stack([np.stack([a, b]) for a, _, b, _ in stack])
    return None


def render(contours: list[np.ndarray], marker_points: list[np.ndarray], g: PathfinderGeometry,
           downsample: bool = True) -> np.ndarray:
    """Draw paddles and markers (white on black) at ``supersample`` x the resolution; box-filter down unless
    ``downsample`` is False. Returns uint8 ``[H, W]``."""
    from PIL import Image, ImageDraw

    s = g.supersample
    canvas = g.resolution * s
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    scale = g.resolution / 32
    width = max(1, int(round(g.thickness * scale * s)))
    for contour in contours:
        for a, b in contour:
            draw.line([tuple(a * s), tuple(b * s)], fill=255, width=width)
    r = g.marker_radius * scale * s
    for c in marker_points:
        x, y = c * s
        draw.ellipse([x - r, y - r, x + r, y + r], fill=255)
    if downsample and s > 1:
        img = img.resize((g.resolution, g.resolution), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def contour_ends(contour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two ends of a contour: the start of its first paddle and the end of its last."""
    return contour[0, 0], contour[-1, 1]


def _markers_clear(contours, markers, marker_points, g: PathfinderGeometry, scale: float) -> bool:
    """A marker is a disc wider than the stroke: it must keep a stroke-and-gap's distance from every contour it
    does not sit on, or it would seem to touch it."""
    need = (g.marker_radius + g.thickness + g.gap) * scale
    for (own, _), point in zip(markers, marker_points):
        for i, c in enumerate(contours):
            if i == own:
                continue
            pts = np.concatenate([_segment_points(a, b, 0.25 * scale) for a, b in c])
            if np.min(np.linalg.norm(pts - point[None], axis=1)) < need:
                return False
    return True


def generate_sample(rng: np.random.Generator, label: int, g: PathfinderGeometry, max_tries: int = 200) -> PathfinderSample:
    """One image with the given label (see the module docstring)."""
    scale = g.resolution / 32
    count = 2 + g.num_distractors
    for _ in range(max_tries):
        contours, occupied = [], _Occupancy(g.resolution, g.clearance * scale)
        for _ in range(count):
            c = _grow_contour(rng, g, scale, occupied)
            if c is None:
                break
            contours.append(c)
            occupied.stamp(np.concatenate([_segment_points(a, b, 0.5 * scale) for a, b in c]))
        if len(contours) < count:
            continue
        if label == 1:
            markers = [(0, 0), (0, 1)]
        else:
            markers = [(0, int(rng.integers(2))), (1, int(rng.integers(2)))]
        marker_points = [contour_ends(contours[i])[end] for i, end in markers]
        if not _markers_clear(contours, markers, marker_points, g, scale):
            continue
        image = render(contours, marker_points, g)
        return PathfinderSample(image=image, label=label, contours=contours, markers=markers)
    raise ConfigError(f"Pathfinder generator: could not place {count} contours of {g.contour_length} paddles in "
                      f"{max_tries} tries at resolution {g.resolution}; use fewer distractors, shorter contours "
                      f"or a smaller clearance")


def generate_pathfinder(num_examples: int, seed: int, geometry: PathfinderGeometry | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(pixels uint8 [N, resolution**2], labels int64 [N])``, labels balanced in a seeded random order."""
    g = geometry or PathfinderGeometry()
    g.validate()
    rng = np.random.default_rng(int(seed))
    labels = np.zeros(num_examples, dtype=np.int64)
    labels[: num_examples // 2] = 1
    rng.shuffle(labels)
    pixels = np.empty((num_examples, g.resolution * g.resolution), dtype=np.uint8)
    for i in range(num_examples):
        pixels[i] = generate_sample(rng, int(labels[i]), g).image.reshape(-1)
    return pixels, labels


def marker_distance_baseline(num_examples: int, seed: int, geometry: PathfinderGeometry | None = None) -> float:
    """The accuracy of the best threshold on the distance between the two markers (close: label 1), over
    ``num_examples`` generated images with balanced labels: what a model gets without following any contour.
    The two ends of one short contour are close together, so this shortcut is strong at short contour lengths
    (README.md gives the numbers)."""
    g = geometry or PathfinderGeometry()
    g.validate()
    rng = np.random.default_rng(int(seed))
    labels = np.arange(num_examples) % 2
    dist = np.empty(num_examples)
    for i, label in enumerate(labels):
        sample = generate_sample(rng, int(label), g)
        a, b = (contour_ends(sample.contours[c])[end] for c, end in sample.markers)
        dist[i] = np.linalg.norm(a - b)
    order = np.argsort(dist, kind="stable")
    # threshold after the first j sorted distances: those j say 1, the rest 0
    ones_before = np.concatenate([[0], np.cumsum(labels[order])])
    j = np.arange(num_examples + 1)
    correct = ones_before + (num_examples - j) - (labels.sum() - ones_before)
    return float(correct.max() / num_examples)


def condition_length(condition: str) -> int | None:
    """Contour length of a release condition name (``curv_contour_length_14`` -> 14; baseline -> 6)."""
    if condition == "curv_baseline":
        return 6
    m = re.fullmatch(r"curv_contour_length_(\d+)", condition)
    return int(m.group(1)) if m else None


__all__ = ["CONDITIONS", "EMPTY_IMAGES", "PathfinderGeometry", "PathfinderSample", "contour_ends",
           "generate_pathfinder", "generate_sample", "read_metadata_lines", "read_pathfinder_folder", "render",
           "split_indices"]
