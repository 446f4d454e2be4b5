#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one run that fits a short loan of one (at most 9 minutes):
#   1. the kernel parity suite on CUDA, fp32 and bf16: our Triton kernels and the upstream ones (issue 4)
#   2. python -m bench.kernels --quick: the kernels at the papers' shapes, gated, against the reference
#      and the upstream kernels (bench/README.md, GPU section)
#   3. python -m bench.train_throughput: the five apples-to-apples 100m presets, bf16, with the projected
#      hours for 10B tokens
# Each step has its own time limit, so that one slow step leaves the others their time. The machine, the
# logs and the result files go to $OUT when it is set (a folder that comes back from the GPU machine),
# else to out/gpu-check.
#
#   bash bench/gpu_check.sh prepare    on the machine that sends the repo: copies mamba_ssm's Python code
#                                      (its Triton SSD kernel, and the pure-PyTorch references the tests and
#                                      benchmarks compare with) into .gpu-site/, for a GPU machine that has
#                                      torch, Triton and transformers but cannot install packages
#   bash bench/gpu_check.sh            on the GPU machine, from the repo's root
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == prepare ]]; then
    package=$(python3 -c "import importlib.util; print(importlib.util.find_spec('mamba_ssm').submodule_search_locations[0])") \
        || { echo "prepare: mamba_ssm is not installed here; run bash tests/install_oracles.sh first" >&2; exit 1; }
    rm -rf .gpu-site && mkdir -p .gpu-site && cp -r "$package" .gpu-site/
    echo "copied mamba_ssm into .gpu-site/ (it travels with the repo when named; .gitignore keeps it out of git)"
    exit 0
fi

out="${OUT:-out/gpu-check}"
mkdir -p "$out"
export PYTHONPATH="$PWD/.gpu-site:$PWD" PYTHONUNBUFFERED=1
python=$(command -v python3 || command -v python)

step() {  # step NAME SECONDS COMMAND...: run COMMAND under a time limit, its output to the screen and $out/NAME.log
    local name=$1 limit=$2 began=$SECONDS
    shift 2
    echo "== $name (at most ${limit} s): $*" | tee "$out/$name.log"
    timeout "$limit" "$@" 2>&1 | tee -a "$out/$name.log"
    echo "== $name: exit status ${PIPESTATUS[0]} (124: out of time) after $((SECONDS - began)) s" | tee -a "$out/$name.log"
}

step machine 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $python -c '
import torch, triton, transformers
print(\"torch\", torch.__version__, \"CUDA\", torch.version.cuda, \"Triton\", triton.__version__,
      \"transformers\", transformers.__version__)
from nanohybrid import ops
ops.load_backends()
for op in ops.OPS:
    print(op, sorted(ops.implementations(op)))'"
step tests 240 "$python" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_upstream.py tests/test_ops.py
step kernels 150 "$python" -m bench.kernels --device cuda --quick
step train 120 "$python" -m bench.train_throughput --device cuda --dtype bf16 --quick \
    --arch hymba mamba2 mamba2-ffn llama3 samba
cp bench/results/kernels_gpu_quick.md bench/results/kernels_gpu_quick.png \
    bench/results/train_throughput_gpu_bf16_quick.md "$out"/ 2>/dev/null
echo "results in $out: $(ls "$out" | tr '\n' ' ')"
