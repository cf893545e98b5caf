"""Imported by the fork server first, before the modules it preloads (`forkserver`): no
garbage collection while it imports them. Each full collection during those imports walked
every object made so far again (distributed, rasterio, shapely, pyproj, the chip tasks).
`frozen`, imported last, freezes what they made and resumes the collector, so workers
start with it on."""

import gc

gc.disable()
