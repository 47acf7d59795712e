#!/usr/bin/env bash
# The CUDA path on a GPU machine that reaches no package registry (issue 28): the device tests, then the GPU benchmark,
# all under 8 minutes; writes results/bench-cuda.json (or $OUT/bench-cuda.json when OUT is set, as on the device tool).
#
# That machine's Python has a CUDA torch, torchdiffeq, scipy, safetensors, tqdm and pytest; POT and torchcfm travel as
# wheels in .whl/ (ignored by git), fetched here once with:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl POT==0.9.7.post1 torchcfm==1.0.7
# and the run is:   bash benchmarks/gpu.sh        (with .whl carried to the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-results}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pfm-site .whl/*.whl
    export PYTHONPATH="/tmp/pfm-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# pfm (and the experiments, for the 2D task's reward) from this checkout, without installing anything else
export PYTHONPATH="$PWD/src:$PWD/experiments/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
start=$SECONDS
PFM_TEST_DEVICE=cuda timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_device.py 2>&1 | tee "$out/gpu-tests.log"
echo "device tests: $((SECONDS - start)) s"
timeout 330 python3 benchmarks/gpu.py --device cuda --out "$out/bench-cuda.json" 2>&1 | tee "$out/gpu-bench.log"
echo "all: $((SECONDS - start)) s"
