"""sn5dask.core.folds: contiguous blocks of about equal size, deterministic, CRESI's CSV."""

from __future__ import annotations

import io
import random

import numpy as np
import pandas as pd
import pytest

from sn5dask.core.folds import folds_csv, spatial_folds


def grid(columns: int, rows: int) -> dict[str, tuple[float, float]]:
    """Chip centres of a columns x rows block of 400 m chips near Moscow."""
    return {f"chip{r * columns + c}": (37.6 + c * 0.0064, 55.75 - r * 0.0036)
            for r in range(rows) for c in range(columns)}


@pytest.mark.parametrize("columns, rows, k", [(10, 10, 5), (7, 3, 5), (12, 5, 4), (3, 3, 2), (5, 1, 5)])
def test_folds_are_balanced_contiguous_blocks(columns, rows, k) -> None:
    centres = grid(columns, rows)
    folds = spatial_folds(centres, k)
    sizes = np.bincount(list(folds.values()), minlength=k)
    assert len(folds) == len(centres) and sizes.min() >= 1 and sizes.max() - sizes.min() <= 2
    # contiguous: each fold's chips form one 4-connected region of the grid
    position = {cid: (round((lon - 37.6) / 0.0064), round((55.75 - lat) / 0.0036))
                for cid, (lon, lat) in centres.items()}
    for fold in range(k):
        cells = {position[c] for c, f in folds.items() if f == fold}
        seen, todo = set(), [next(iter(cells))]
        while todo:
            cell = todo.pop()
            if cell in seen:
                continue
            seen.add(cell)
            x, y = cell
            todo.extend(n for n in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)) if n in cells)
        assert seen == cells, (fold, sorted(cells))


def test_same_chips_same_folds_whatever_the_order() -> None:
    centres = grid(9, 6)
    items = list(centres.items())
    random.Random(1).shuffle(items)
    assert spatial_folds(dict(items), 5) == spatial_folds(centres, 5)


def test_fewer_chips_than_folds() -> None:
    assert sorted(spatial_folds(grid(3, 1), 5).values()) == [0, 1, 2]
    assert spatial_folds({}, 5) == {}
    with pytest.raises(ValueError):
        spatial_folds(grid(2, 2), 0)


def test_csv_is_what_pandas_and_cresi_read() -> None:
    text = folds_csv({"b_PS-RGB_chip1.tif": 1, "a_PS-RGB_chip0.tif": 0})
    df = pd.read_csv(io.StringIO(text), index_col=0)
    assert list(df.index) == ["a_PS-RGB_chip0.tif", "b_PS-RGB_chip1.tif"] and list(df["fold"]) == [0, 1]
