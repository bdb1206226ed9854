"""Pathfinder: the generator's labels checked on its own drawing (are the two markers joined by a dashed
contour?), its geometry, and the loader on a small folder in the released layout."""

from collections import deque

import numpy as np
import pytest
import torch
from PIL import Image

from seqzoo.common import ConfigError
from seqzoo.eval.lra import pathfinder as pf


def _joined(mask: np.ndarray, a: tuple[int, int], b: tuple[int, int], bridge: int) -> bool:
    """Is pixel ``b`` reachable from pixel ``a`` over bright pixels, stepping across gaps of up to ``bridge``
    pixels (a dashed contour is one component, two contours ``clearance`` apart are two)?"""
    h, w = mask.shape
    steps = [(dy, dx) for dy in range(-bridge, bridge + 1) for dx in range(-bridge, bridge + 1)
             if (dy or dx) and dy * dy + dx * dx <= bridge * bridge]
    seen = np.zeros_like(mask, dtype=bool)
    queue = deque([a])
    seen[a] = True
    while queue:
        y, x = queue.popleft()
        if (y, x) == b:
            return True
        for dy, dx in steps:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                seen[ny, nx] = True
                queue.append((ny, nx))
    return False


def test_labels_match_the_drawing():
    """Draw each sample at 8x (no down-sampling) and walk its bright pixels from one marker: the other marker is
    reached exactly when the label is 1. A dash gap is 0.75 px = 6 canvas pixels; two contours are at least
    2 px apart centre to centre, 1 px = 8 canvas pixels edge to edge; steps of up to 7 pixels join the dashes
    of one contour and never two contours."""
    g = pf.PathfinderGeometry(supersample=8)
    rng = np.random.default_rng(0)
    labels = [1, 0] * 8
    for label in labels:
        s = pf.generate_sample(rng, label, g)
        assert s.label == label
        points = [pf.contour_ends(s.contours[i])[end] for i, end in s.markers]
        canvas = pf.render(s.contours, points, g, downsample=False)
        mask = canvas > 127
        a, b = [(int(p[1] * g.supersample), int(p[0] * g.supersample)) for p in points]
        assert mask[a] and mask[b], "a marker is not drawn"
        assert _joined(mask, a, b, bridge=7) == bool(label)


def test_geometry_follows_the_settings():
    g = pf.PathfinderGeometry()
    rng = np.random.default_rng(1)
    for label in (0, 1, 0, 1):
        s = pf.generate_sample(rng, label, g)
        assert len(s.contours) == 2 + g.num_distractors
        for c in s.contours:
            assert c.shape == (g.contour_length, 2, 2)
            seg = c[:, 1] - c[:, 0]
            np.testing.assert_allclose(np.linalg.norm(seg, axis=1), g.paddle_length, rtol=1e-9)
            np.testing.assert_allclose(np.linalg.norm(c[1:, 0] - c[:-1, 1], axis=1), g.gap, rtol=1e-9)
            angles = np.arctan2(seg[:, 1], seg[:, 0])
            turns = np.degrees(np.abs((np.diff(angles) + np.pi) % (2 * np.pi) - np.pi))
            assert turns.max() <= g.max_turn + 1e-9
            assert c.min() >= 0 and c.max() <= g.resolution
        # contours keep their clearance from each other (checked on densely sampled centre lines)
        dense = [np.concatenate([np.linspace(a, b, 9) for a, b in c]) for c in s.contours]
        for i in range(len(dense)):
            for j in range(i + 1, len(dense)):
                d = np.linalg.norm(dense[i][:, None] - dense[j][None], axis=-1).min()
                assert d >= g.clearance - 0.3  # grid cells of half a pixel
        if label:
            assert s.markers == [(0, 0), (0, 1)]
        else:
            assert [m[0] for m in s.markers] == [0, 1]


def test_dataset_is_balanced_seeded_and_has_no_brightness_cue():
    x, y = pf.generate_pathfinder(16, seed=3)
    assert x.shape == (16, 1024) and x.dtype == np.uint8 and y.sum() == 8
    x2, y2 = pf.generate_pathfinder(16, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(pf.generate_pathfinder(4, seed=4)[0], x[:4])
    # same number of contours and markers in both classes: the mean brightness does not give the label away
    means = x.reshape(16, -1).mean(1)
    assert abs(means[y == 1].mean() - means[y == 0].mean()) < 3 * means.std() / np.sqrt(8)
    assert 0 < means.min() and means.max() < 128


def test_path_x_resolution():
    x, y = pf.generate_pathfinder(2, seed=0, geometry=pf.PathfinderGeometry(resolution=128))
    assert x.shape == (2, 128 * 128)


def test_bad_geometry_names_the_field():
    with pytest.raises(ConfigError, match="clearance"):
        pf.PathfinderGeometry(clearance=1.0).validate("task.")
    with pytest.raises(ConfigError, match="task.resolution"):
        pf.PathfinderGeometry(resolution=8).validate("task.")


def _write_release(root, condition, entries, resolution=32):
    """A pathfinder folder in the released layout; entries: (metadata file number, image number, label,
    pixels or None for an empty file)."""
    for k, i, label, pixels in entries:
        img_dir = root / condition / "imgs" / str(k)
        img_dir.mkdir(parents=True, exist_ok=True)
        if pixels is None:
            (img_dir / f"sample_{i}.png").write_bytes(b"")
        else:
            Image.fromarray(pixels.reshape(resolution, resolution)).save(img_dir / f"sample_{i}.png")
        meta = root / condition / "metadata"
        meta.mkdir(parents=True, exist_ok=True)
        with open(meta / f"{k}.npy", "a") as f:  # text despite the name, as released
            f.write(f"imgs/{k} sample_{i}.png {i} {label} 2 1.5 1.0 1.8 0.8 14 1 1 2 2 2\n")


def test_folder_loader_reads_the_released_layout(tmp_path):
    root = tmp_path / "pathfinder32"
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 1024), dtype=np.uint8)
    entries = [(10, 0, 1, imgs[0]), (2, 5, 0, imgs[1]), (2, 6, 1, imgs[2]), (0, 172, 0, None), (0, 3, 1, imgs[3])]
    _write_release(root, "curv_baseline", entries)
    pixels, labels = pf.read_pathfinder_folder(root, "curv_baseline", resolution=32)
    # metadata files in numeric order (0, 2, 10), lines in order; the known empty image skipped
    np.testing.assert_array_equal(pixels, imgs[[3, 1, 2, 0]])
    np.testing.assert_array_equal(labels, [1, 0, 1, 1])
    # any other unreadable image is an error naming it
    _write_release(root, "curv_contour_length_14", [(0, 172, 1, None)])
    with pytest.raises(ValueError, match="sample_172.png"):
        pf.read_pathfinder_folder(root, "curv_contour_length_14")
    with pytest.raises(ValueError, match="expected 128x128"):
        pf.read_pathfinder_folder(root, "curv_baseline", resolution=128)


def test_folder_loader_missing_data_says_where(tmp_path):
    with pytest.raises(ConfigError, match="pathfinder32.*lra_release"):
        pf.read_pathfinder_folder(tmp_path / "pathfinder32")
    (tmp_path / "pathfinder32").mkdir()
    with pytest.raises(ConfigError, match="curv_contour_length_14"):
        pf.read_pathfinder_folder(tmp_path / "pathfinder32")


def test_split_matches_torch_random_split():
    n = 103
    parts = pf.split_indices(n, seed=42)
    ref = torch.utils.data.random_split(range(n), [n - 20, 10, 10], generator=torch.Generator().manual_seed(42))
    for name, subset in zip(("train", "valid", "test"), ref):
        assert list(parts[name]) == list(subset.indices)


def test_marker_distance_baseline_is_the_best_threshold_and_weakens_with_length():
    """The shortcut's accuracy equals a brute-force search over thresholds on the same images, and the ends of
    one contour are easier to tell apart by distance when contours are short."""
    n, seed = 120, 3
    short = pf.PathfinderGeometry(contour_length=6)
    got = pf.marker_distance_baseline(n, seed, short)
    rng = np.random.default_rng(seed)
    dist, labels = [], []
    for i in range(n):
        s = pf.generate_sample(rng, i % 2, short)
        a, b = (pf.contour_ends(s.contours[c])[e] for c, e in s.markers)
        dist.append(float(np.hypot(*(a - b))))
        labels.append(i % 2)
    dist, labels = np.array(dist), np.array(labels)
    cuts = np.concatenate([[-1.0], np.sort(dist)])
    best = max(((dist <= c) == labels).mean() for c in cuts)
    assert got == pytest.approx(best)
    assert got > 0.75
    assert pf.marker_distance_baseline(n, seed, pf.PathfinderGeometry(contour_length=14)) < got
