#!/bin/sh
# Build the sn5dask image that deploy/k8s/*.yaml and the AWS launcher run, tagged as they
# name it (or as IMAGE says), with docker or podman:
#   deploy/build-image.sh                      # ghcr.io/sn5dask/sn5dask:<version>
#   IMAGE=123456789012.dkr.ecr.us-east-1.amazonaws.com/sn5dask:0.1.0 deploy/build-image.sh --push
#   deploy/build-image.sh --print-tag          # the tag only
set -eu
cd "$(dirname "$0")/.."
version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)"
image="${IMAGE:-ghcr.io/sn5dask/sn5dask:$version}"
if [ "${1:-}" = "--print-tag" ]; then
    echo "$image"
    exit 0
fi
engine="${CONTAINER_ENGINE:-$(command -v docker || command -v podman || true)}"
if [ -z "$engine" ]; then
    echo "error: neither docker nor podman is installed (or set CONTAINER_ENGINE)" >&2
    exit 2
fi
"$engine" build -t "$image" .
"$engine" run --rm "$image" sn5dask versions
if [ "${1:-}" = "--push" ]; then
    "$engine" push "$image"
fi
echo "built $image"
