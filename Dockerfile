# sn5dask image: the `sn5dask` CLI plus `dask scheduler` / `dask worker`, one image for the
# client, the scheduler and the workers (AWS, Kubernetes, docker compose).
#   docker build -t sn5dask:0.1.0 .
#   docker run --rm sn5dask:0.1.0 sn5dask demo /tmp/demo
#   docker run --rm -p 8786:8786 -p 8787:8787 sn5dask:0.1.0 dask scheduler
#   docker run --rm sn5dask:0.1.0 dask worker tcp://scheduler:8786 --nthreads 1
# Dependencies come from pyproject.toml (the same ranges as a pip install); rasterio,
# pyproj and shapely wheels carry GDAL, PROJ and GEOS, so no system GIS packages are needed.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GDAL_DISABLE_READDIR_ON_OPEN=EMPTY_DIR

WORKDIR /opt/sn5dask
# Dependencies first, in a layer of their own: installed from pyproject.toml with an empty
# stand-in package, so a change to sn5dask's code does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -m pip install --upgrade pip && \
    mkdir sn5dask && touch sn5dask/__init__.py && \
    python -m pip install '.[aws]' && \
    python -m pip uninstall --yes sn5dask && \
    rm -r sn5dask build
COPY sn5dask ./sn5dask
RUN python -m pip install --no-deps . && \
    sn5dask versions

# Workers started from this image (dask worker, with its nanny) keep glibc's malloc defaults
# instead of distributed's MALLOC_TRIM_THRESHOLD_=65536: 17-20 % faster chips, measured.
RUN mkdir -p /etc/dask && \
    printf 'distributed:\n  nanny:\n    pre-spawn-environ:\n      MALLOC_TRIM_THRESHOLD_: null\n' \
    > /etc/dask/sn5dask.yaml

RUN useradd --create-home --uid 1000 sn5dask
USER sn5dask
WORKDIR /home/sn5dask

EXPOSE 8786 8787
CMD ["sn5dask", "--help"]
