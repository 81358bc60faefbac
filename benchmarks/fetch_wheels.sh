#!/usr/bin/env bash
# Wheels the GPU machine lacks (it has torch, numpy, scikit-image, CuPy): MONAI, nibabel, pytorch-ignite, fire and
# their pure-Python needs, for CPython 3.12 on x86-64, into .whl/ (ignored by git). ITK (over 100 MB) is left out:
# the GPU script reads NIfTI only (scipy and pillow come with the machine's scikit-image). About 40 MB: under the
# device tool's 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
for pkg in monai==1.6.1 nibabel pytorch-ignite fire termcolor tensorboard tensorboard-data-server protobuf \
           grpcio absl-py markdown werkzeug tqdm matplotlib packaging importlib-resources \
           cycler kiwisolver fonttools pyparsing contourpy python-dateutil six markupsafe; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$pkg" || echo "could not fetch $pkg"
done
du -sh .whl
