"""A ready loader for training on sn5dask outputs, without depending on torch.

`ChipDataset` is a map-style dataset (`len`, `[i]`): exactly what
`torch.utils.data.DataLoader` takes, so

    from torch.utils.data import DataLoader
    from sn5dask.training import ChipDataset
    loader = DataLoader(ChipDataset("prepared/", folds=(0, 1, 2, 3), crop=512), batch_size=8, shuffle=True)

works as it is (the default collate turns the numpy arrays into tensors). Items come from
`folds.csv` (chips whose masks were written), read from the GeoTIFFs or the Zarr store.
Each item opens its files itself, so it is safe in DataLoader worker processes.
"""

from __future__ import annotations

import copy
import multiprocessing
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from sn5dask.core.speed import BIN_VALUE_STEP, N_SPEED_CHANNELS
from sn5dask.errors import Sn5daskError
from sn5dask.io import files
from sn5dask.io.chipio import FileWriter, read_json
from sn5dask.outputs.layout import AoiLayout, layouts_under, output_name
from sn5dask.outputs.manifest import Manifest

MaskKind = Literal["binary", "continuous", "binned", "multichannel"]


@dataclass(frozen=True)
class ChipItem:
    """One listed chip: where its files are, its id, fold and Zarr index."""

    layout: AoiLayout
    name: str
    chip_id: str
    fold: int
    zarr_index: int | None


class ChipDataset:
    """Chips of one AOI (or every AOI under `out`) for training.

    - `masks`: the mask kind returned as `mask` (multichannel: (8, H, W)).
    - `folds`: keep only chips in these folds (None: all listed chips).
    - `crop`: a square window of this side; its place is drawn from `seed`, the epoch
      (`set_epoch`) and the item's index, so an epoch gives the same crops every time and
      each epoch other ones. None: whole chips. Where a crop reaches past a smaller chip,
      the image is 0 (nodata) and the mask `mask_pad_value` (default 0, which reads as
      background: give e.g. 255 and `CrossEntropyLoss(ignore_index=255)` to leave it out).
    - `index_masks`: masks as class indices: binary and multichannel 0/1, binned the speed
      bin 0..7 (continuous has no classes and is refused).
    - `source`: "geotiff" (the per-chip files) or "zarr" (the AOI's store).

    `ds[i]` is a dict: `image` (bands, H, W) uint8, `mask` uint8, `chip_id`, `aoi`, `fold`.
    """

    def __init__(
        self,
        out: str,
        aoi: str | None = None,
        *,
        masks: MaskKind = "multichannel",
        folds: Iterable[int] | None = None,
        crop: int | None = None,
        index_masks: bool = False,
        seed: int = 0,
        source: Literal["geotiff", "zarr"] = "geotiff",
        mask_pad_value: int = 0,
    ) -> None:
        if index_masks and masks == "continuous":
            raise ValueError("continuous masks hold speeds, not classes: index_masks needs another kind")
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be a positive side in pixels, not {crop}")
        if not 0 <= mask_pad_value <= 255:
            raise ValueError(f"mask_pad_value must fit the uint8 masks (0-255), not {mask_pad_value}")
        self.masks, self.crop, self.index_masks, self.seed = masks, crop, index_masks, seed
        self.source, self.mask_pad_value = source, mask_pad_value
        # The epoch lives in shared memory, created before any DataLoader worker starts, so
        # `set_epoch` reaches workers that persist across epochs (`persistent_workers=True`:
        # each holds its own copy of the dataset, where a plain attribute would never change).
        self._epoch = multiprocessing.RawValue("q", 0)
        wanted = None if folds is None else set(folds)
        out = files.normalise_location(out)
        layouts = [AoiLayout(out, aoi)] if aoi else layouts_under(out)
        if not layouts:
            raise Sn5daskError(f"{out}: no sn5dask output folder (no manifest.json) here")
        self.items: list[ChipItem] = []
        for layout in layouts:
            self.items.extend(
                item for item in _listed_chips(layout) if wanted is None or item.fold in wanted
            )
        self._stores: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Draw the next crops for `epoch` (as a sampler's `set_epoch`), in this process
        and in DataLoader workers already started."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def __deepcopy__(self, memo: dict[int, Any]) -> ChipDataset:
        """A copy with an epoch of its own (the shared one pickles only into the worker
        processes a DataLoader starts)."""
        copied = copy.copy(self)
        copied.items = list(self.items)
        copied._stores = {}
        copied._epoch = multiprocessing.RawValue("q", self.epoch)
        return copied

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if self.source == "zarr":
            image, mask = self._read_zarr(item)
        else:
            image = _read_geotiff(item.layout.url(item.layout.rgb_relpath(item.name)))
            mask = _read_geotiff(item.layout.url(item.layout.mask_relpath(self.masks, item.name)))
        inside = None
        if self.crop is not None:
            # epoch 0 draws the crops of versions without set_epoch
            key = [self.seed, index] if self.epoch == 0 else [self.seed, self.epoch, index]
            rng = np.random.default_rng(key)
            image, mask, inside = _crop(image, mask, self.crop, rng)
        if self.masks != "multichannel":
            mask = mask[0]
        if self.index_masks:
            mask = class_indices(mask, self.masks)
        if inside is not None and self.mask_pad_value:
            mask[..., inside[0] :, :] = self.mask_pad_value
            mask[..., :, inside[1] :] = self.mask_pad_value
        return {"image": image, "mask": mask, "chip_id": item.chip_id, "aoi": item.layout.aoi,
                "fold": item.fold}  # fmt: skip

    def _read_zarr(self, item: ChipItem) -> tuple[np.ndarray, np.ndarray]:
        from sn5dask.runner.aoiarray import chip_dataarray, open_store

        url = item.layout.zarr_url
        if url not in self._stores:  # opened once per process (metadata only)
            self._stores[url] = open_store(url)
        store = self._stores[url]
        image = chip_dataarray(store, item.chip_id, var="rgb").values
        mask = chip_dataarray(store, item.chip_id, var=f"mask_{self.masks}").values
        return image, mask if mask.ndim == 3 else mask[np.newaxis]


def class_indices(mask: np.ndarray, kind: str) -> np.ndarray:
    """A mask's values as class indices (uint8): binary and multichannel 0/1, binned the
    speed bin 0..7 (255, above 70 mph, is bin 7)."""
    if kind in ("binary", "multichannel"):
        return (mask > 0).astype(np.uint8)
    if kind == "binned":
        return np.minimum(mask // BIN_VALUE_STEP, N_SPEED_CHANNELS).astype(np.uint8)
    raise ValueError(f"{kind} masks have no class indices")


def read_folds(url: str) -> dict[str, int]:
    """`folds.csv` (CRESI's format) as {RGB file name: fold}."""
    text = files.read_bytes(url).decode()
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines or lines[0].split(",")[-1].strip() != "fold":
        raise Sn5daskError(f"{url}: not a folds CSV (expected a header ',fold')")
    folds = {}
    for line in lines[1:]:
        name, fold = line.rsplit(",", 1)
        folds[name] = int(fold)
    return folds


def _listed_chips(layout: AoiLayout) -> list[ChipItem]:
    try:
        folds = read_folds(layout.folds_url)
    except FileNotFoundError:
        if files.exists(layout.manifest_url) and not _lists_masks(layout):
            return []  # a finished run wrote no folds: no chip has masks
        raise Sn5daskError(f"{layout.folds_url}: missing: run `sn5dask run` to write it") from None
    manifest = Manifest.parse(read_json(FileWriter(), layout.manifest_url), layout.manifest_url)
    by_name: dict[str, tuple[str, int | None]] = {}
    for chip_id, entry in manifest.chips.items():
        rgb = entry.outputs.get("rgb")
        ref = entry.zarr_ref()
        name = posixpath.basename(rgb) if rgb else None
        if name is None and entry.image:
            name = output_name(posixpath.basename(entry.image))
        if name is not None:
            by_name[name] = (chip_id, ref.index if ref else None)
    items = []
    for name, fold in sorted(folds.items()):
        if name not in by_name:
            raise Sn5daskError(f"{layout.folds_url}: {name} is not in {layout.manifest_url}")
        chip_id, zarr_index = by_name[name]
        items.append(ChipItem(layout, name, chip_id, fold, zarr_index))
    return items


def _lists_masks(layout: AoiLayout) -> bool:
    """Whether the manifest lists any chip with masks (then a missing folds.csv means a
    run that has not finished)."""
    manifest = Manifest.parse(read_json(FileWriter(), layout.manifest_url), layout.manifest_url)
    zarr_masks = bool(manifest.params.get("masks"))
    return any(
        any(kind in entry.outputs for kind in ("binary", "continuous", "binned", "multichannel"))
        or (zarr_masks and entry.label is not None and "zarr" in entry.outputs)
        for entry in manifest.chips.values()
    )


def _read_geotiff(url: str) -> np.ndarray:
    import rasterio

    from sn5dask.io.raster import gdal_env, gdal_path

    with gdal_env(url), rasterio.open(gdal_path(url)) as src:
        return src.read()


def _crop(
    image: np.ndarray, mask: np.ndarray, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """The window of `side` px, and how many of its rows and columns lie in the chip."""
    height, width = image.shape[-2:]
    top = int(rng.integers(0, max(height - side, 0) + 1))
    left = int(rng.integers(0, max(width - side, 0) + 1))
    inside = (min(side, height - top), min(side, width - left))
    return _window(image, top, left, side), _window(mask, top, left, side), inside


def _window(array: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    out = np.zeros(array.shape[:-2] + (side, side), dtype=array.dtype)
    part = array[..., top : top + side, left : left + side]
    out[..., : part.shape[-2], : part.shape[-1]] = part
    return out
