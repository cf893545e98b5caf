"""Running a job: the chip tasks (scan, process), the dask graphs, the run loop, the
client and how local workers start."""
