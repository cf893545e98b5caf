"""Imported by the fork server last, after every module it preloads (`forkserver`):
freezes them for the garbage collector (`gc.freeze`, Python's documented step before
forking workers from a preloaded parent) and resumes the collector `gcpause` paused.

A worker forked from the server then never scans those objects in its own collections
(distributed, rasterio, shapely, pyproj and the chip-task code: some 10^5 of them, walked
by every full collection), does not copy-on-write their pages by touching their GC
headers, and the server itself exits at once when the run ends instead of collecting
them after the client's last line.
"""

import gc

gc.freeze()
gc.enable()
