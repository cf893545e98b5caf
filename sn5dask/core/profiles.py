"""The two profiles of DESIGN.md §3, each one frozen object holding all of its rules.

The pipeline and the pure core ask the profile (`profile.skip_zero_fraction`,
`profile.overlap`, ...) instead of comparing names, so a rule lives here and only here.
Pure data: importing this module imports nothing heavy (it is pickled to workers inside
`ChipJob`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Profile:
    """Every rule that differs between the profiles (DESIGN.md §3, one field per row)."""

    name: str
    #: Percentile scope when `--stretch` is not given: the whole AOI, or each chip.
    percentile_scope: Literal["aoi", "chip"]
    #: Valid pixels for percentiles: value > 0, and (when True) != the band's nodata tag.
    honour_nodata_tag: bool
    #: A chip with at least this share of zeros in a selected band gets no RGB (`skipped`;
    #: masks are still written). None: never skipped.
    skip_zero_fraction: float | None
    #: Which UTM zone the metric buffer uses: CRESI's (label centroid's longitude, always
    #: northern) or the WGS84 zone (326xx/327xx) containing the chip footprint's centre.
    utm_rule: Literal["label_centroid_north", "chip_centre"]
    #: Segments per quarter circle of the road buffer: 1 = CRESI's pointed caps, 16 = round.
    buffer_quad_segs: int
    #: Overlapping roads: CRESI's dissolve by mps ascending (each group burns the mph of its
    #: first row), or the fastest road wins whatever the feature order.
    overlap: Literal["dissolve_by_mps", "fastest_wins"]
    #: Roads with no usable speed: burned in `binary` and multichannel band 8 (True), or not
    #: burned at all (CRESI drops them).
    burn_roads_without_speed: bool
    #: Mask zeroing under image nodata: wherever every band is 0, or (CRESI) where the bands
    #: sum to 0, only if at least `nodata_min_share` of pixels do, multi-band images only.
    nodata_zeroing: Literal["all_bands_zero", "band_sum_zero_if_share"]
    nodata_min_share: float
    #: Smallest 8-bit value of a valid RGB pixel (1: 0 means nodata only; 0: CRESI's pixels).
    rgb_valid_floor: int
    #: Warn when a band's two percentiles are equal (the GDAL rule makes it 0/255).
    warn_flat_band: bool
    #: The multichannel mask's band layout: "pixel" as CRESI wrote it (skimage, tifffile
    #: and PIL read (H, W, 8)), or "band" (each band compressed alone: faster to write and
    #: smaller, `benchmarks/bench_encode.py`; rasterio, GDAL and TorchGeo read both the same).
    multichannel_interleave: Literal["pixel", "band"] = "band"

    @property
    def skips_chips(self) -> bool:
        return self.skip_zero_fraction is not None


SN5DASK = Profile(
    name="sn5dask",
    percentile_scope="aoi",
    honour_nodata_tag=True,
    skip_zero_fraction=None,
    utm_rule="chip_centre",
    buffer_quad_segs=16,  # shapely's default, solaris' buffer (case R1)
    overlap="fastest_wins",
    burn_roads_without_speed=True,
    nodata_zeroing="all_bands_zero",
    nodata_min_share=0.0,
    rgb_valid_floor=1,
    warn_flat_band=True,
)

CRESI = Profile(
    name="cresi",
    percentile_scope="chip",
    honour_nodata_tag=False,  # CRESI only treats 0 as invalid
    skip_zero_fraction=0.3,  # CRESI's --max_zero_frac
    utm_rule="label_centroid_north",
    buffer_quad_segs=1,  # CRESI passes buffer(2, 1)
    overlap="dissolve_by_mps",
    burn_roads_without_speed=False,
    nodata_zeroing="band_sum_zero_if_share",
    nodata_min_share=0.05,
    rgb_valid_floor=0,
    warn_flat_band=False,
    multichannel_interleave="pixel",
)

PROFILES: dict[str, Profile] = {p.name: p for p in (SN5DASK, CRESI)}


def get_profile(profile: str | Profile) -> Profile:
    """The profile object for a name (a `Profile` passes through)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise ValueError(f"unknown profile {profile!r}; choose from {', '.join(PROFILES)}") from None
