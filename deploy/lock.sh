#!/bin/sh
# Regenerate deploy/requirements.lock: the exact versions a fresh `pip install '.[aws]'`
# resolves today, on the image's Python (3.11). Review the diff, then rebuild the image.
set -eu
cd "$(dirname "$0")/.."
python="${PYTHON:-python3.11}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
"$work/venv/bin/python" -m pip install --quiet '.[aws]'
{
    sed -n '/^#/p' deploy/requirements.lock
    "$work/venv/bin/python" -m pip freeze --exclude sn5dask
} > "$work/requirements.lock"
mv "$work/requirements.lock" deploy/requirements.lock
echo "deploy/requirements.lock: $(grep -c '==' deploy/requirements.lock) pinned packages"
