#!/bin/sh
# Where onnxruntime's GPU build was installed (the `gpu` extra), make it the only onnxruntime.
# Both wheels write the same `onnxruntime` package and insightface requires the CPU one by name,
# so after `pip install ".[local,gpu]"` the files are whichever wheel wrote last. Removing the
# CPU one deletes the files they share, hence the GPU one is written again after it.
# Without the GPU build installed this does nothing.
set -eu

version=$(python -m pip show onnxruntime-gpu 2>/dev/null | sed -n 's/^Version: //p')
if [ -z "$version" ]; then
    exit 0
fi
python -m pip uninstall --yes onnxruntime
python -m pip install --no-cache-dir --no-deps --force-reinstall "onnxruntime-gpu==$version"
echo "onnxruntime: the GPU build $version alone"
