#!/usr/bin/env bash
# The GPU paths in one go, on one machine with an NVIDIA GPU (sized for an H100 / H200: about
# 8 minutes with pip's cache warm), from the repository root:
#
#   benchmarks/gpu.sh [--dry-run] [--no-install] [--minutes M] [--work DIR]
#
# 1. installs with the project's own command (the README's test install),
# 2. runs the `gpu`-marked tests (DeepSpeed ZeRO-2 bf16 training, HiFi-GAN on a GPU, ...),
# 3. prints one table (benchmarks/gpu.py): base preset samples/s, TFLOP/s, MFU and peak memory for
#    DDP bf16 vs DeepSpeed ZeRO-2 bf16; the large preset with ZeRO-2 vs ZeRO-3; HiFi-GAN v1
#    training steps/s; generation real-time factor with HiFi-GAN; face_alignment frames/s on
#    staged random weights.
# --dry-run prints what it would run and checks that the files and modules it needs are there,
# on any machine (tests/test_gpu_script.py runs it); --no-install skips step 1.
set -euo pipefail
cd "$(dirname "$0")/.."

INSTALL='pip install -e ".[test]" && pip install --no-deps resemblyzer==0.1.4 face-alignment==1.5.0'
GPU_TESTS='python -m pytest -q -m gpu'
usage() { sed -n '5p' "$0" | sed 's/^#  *//' >&2; exit 2; }

dry_run=0 install=1 minutes=0.5 work=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1 ;;
        --no-install) install=0 ;;
        --minutes) [[ $# -ge 2 ]] || usage; minutes="$2"; shift ;;
        --work) [[ $# -ge 2 ]] || usage; work="$2"; shift ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu.sh: unknown argument: $1" >&2; usage ;;
    esac
    shift
done
[[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "gpu.sh: --minutes takes a number, got $minutes" >&2; exit 2; }

TABLE="python benchmarks/gpu.py --minutes $minutes${work:+ --work $work}"
missing=0
for file in pyproject.toml README.md benchmarks/gpu.py benchmarks/train.py tests/conftest.py; do
    [[ -f "$file" ]] || { echo "gpu.sh: missing $file" >&2; missing=1; }
done
# The install above is the README's; a README that changed its install is a script to update.
grep -qF -- "$INSTALL" README.md || { echo "gpu.sh: README.md no longer installs with: $INSTALL" >&2; missing=1; }
marked=$(grep -l "pytest.mark.gpu" tests/*.py || true)
[[ -n "$marked" ]] || { echo "gpu.sh: no gpu-marked tests under tests/" >&2; missing=1; }
[[ $missing -eq 0 ]] || exit 1

if [[ $dry_run -eq 1 ]]; then
    echo "would run, from $(pwd):"
    [[ $install -eq 1 ]] && echo "  $INSTALL"
    echo "  $GPU_TESTS    # $(echo "$marked" | tr '\n' ' ')"
    echo "  $TABLE"
    if command -v nvidia-smi >/dev/null; then
        echo "GPU: $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader)"
    else
        echo "GPU: none here (nvidia-smi not found); a real run needs one"
    fi
    python benchmarks/gpu.py --dry-run --minutes "$minutes"
    exit $?
fi

command -v nvidia-smi >/dev/null || { echo "gpu.sh: no NVIDIA GPU here (nvidia-smi not found); try --dry-run" >&2; exit 1; }
export RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1
start=$SECONDS
step() { echo; echo "== $1 ($((SECONDS - start)) s)"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [[ $install -eq 1 ]]; then
    step "install: $INSTALL"
    eval "$INSTALL"
fi
step "gpu-marked tests: $GPU_TESTS"
$GPU_TESTS
step "table: $TABLE"
$TABLE
echo; echo "== done in $((SECONDS - start)) s"
