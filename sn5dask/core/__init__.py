"""The pure core: the chip grid, stretch, speed, labels, masks, profiles, encodings and
folds. numpy arrays and a grid in, arrays out; no file or S3 I/O, no dask."""
