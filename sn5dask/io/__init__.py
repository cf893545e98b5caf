"""Reading and writing: rasterio/GDAL rasters, the Zarr store, files and S3 (fsspec), the
run lock, discovery of chips and labels, worker-local chip copies and the typed seams."""
