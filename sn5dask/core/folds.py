"""Spatial cross-validation folds: chips grouped by footprint centre into K contiguous
blocks of about equal size (DESIGN.md §5.1), and the CSV CRESI's trainer reads.

Why spatial: neighbouring chips share roads and look alike, so a random split leaks; a
block split keeps neighbours in one fold. How: recursive bisection. The chips are split
along the longer side of their extent at the count that gives each half its share of the
folds (K = 5 splits 2 : 3, then each part again), so every fold is a compact block and
fold sizes differ by at most one chip per split. Ties break by chip id, so the same chips
give the same folds whatever the order they came in or the workers that read them.
Pure: no files, no dask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

DEFAULT_FOLDS = 5


def spatial_folds(centres: Mapping[str, tuple[float, float]], k: int = DEFAULT_FOLDS) -> dict[str, int]:
    """Fold (0..k-1) of each chip from its footprint centre (lon, lat in degrees).

    With fewer chips than folds, each chip is a fold of its own (folds 0..n-1).
    """
    if k < 1:
        raise ValueError(f"folds must be at least 1, not {k}")
    if not centres:
        return {}
    mean_lat = sum(lat for _, lat in centres.values()) / len(centres)
    # Degrees of longitude shrink with latitude: compare extents in (roughly) metres.
    x_scale = math.cos(math.radians(mean_lat))
    unwrap = antimeridian_unwrap([lon for lon, _ in centres.values()])
    points = {cid: (unwrap(lon) * x_scale, lat) for cid, (lon, lat) in centres.items()}
    folds: dict[str, int] = {}
    _bisect(sorted(points), points, min(k, len(points)), 0, folds)
    return folds


def antimeridian_unwrap(longitudes: Sequence[float]) -> Callable[[float], float]:
    """A map of longitudes onto a line on which `longitudes` lie together: the identity,
    unless they straddle 180° (their widest gap is not the one across ±180°), in which
    case the western side is moved by +360° next to the eastern one (179.9, -179.9 ->
    179.9, 180.1). Keeps AOIs on the antimeridian in contiguous blocks."""
    ordered = sorted(longitudes)
    if len(ordered) < 2:
        return lambda lon: lon
    across = 360.0 - (ordered[-1] - ordered[0])  # the gap across ±180°
    widest, after = max((b - a, b) for a, b in zip(ordered, ordered[1:]))
    if widest <= across:
        return lambda lon: lon
    return lambda lon: lon + 360.0 if lon < after else lon


def _bisect(
    ids: list[str],
    points: Mapping[str, tuple[float, float]],
    k: int,
    first_fold: int,
    folds: dict[str, int],
) -> None:
    if k == 1:
        for chip_id in ids:
            folds[chip_id] = first_fold
        return
    xs = [points[c][0] for c in ids]
    ys = [points[c][1] for c in ids]
    axis = 0 if max(xs) - min(xs) >= max(ys) - min(ys) else 1
    ordered = sorted(ids, key=lambda c: (points[c][axis], points[c][1 - axis], c))
    k_first = k // 2
    n_first = round(len(ordered) * k_first / k)
    n_first = min(max(n_first, k_first), len(ordered) - (k - k_first))  # every fold >= 1 chip
    _bisect(ordered[:n_first], points, k_first, first_fold, folds)
    _bisect(ordered[n_first:], points, k - k_first, first_fold + k_first, folds)


def folds_csv(folds_by_name: Mapping[str, int]) -> str:
    """The CSV CRESI's `get_csv_folds` reads (`pandas.read_csv(path, index_col=0)`): an
    unnamed index column of image file names and one column `fold`, sorted by name."""
    lines = [",fold"] + [f"{name},{fold}" for name, fold in sorted(folds_by_name.items())]
    return "\n".join(lines) + "\n"
