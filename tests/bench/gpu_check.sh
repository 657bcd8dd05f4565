#!/usr/bin/env bash
# The GPU check, packed by `cargo xtask gpu-check` into target/gpu-check as run.sh with the
# binaries it runs. On a machine with an NVIDIA GPU, Python 3 and PyTorch (no Rust, no FFmpeg,
# no network needed), from the project's root: `bash target/gpu-check/run.sh`.
#
# 1. tsm-model's CUDA tests (crates/tsm-model/tests/cuda.rs): the shift kernel against the CPU
#    op, forward and backward, f32/f16/bf16/f64; R50 8x224 on the GPU against the CPU (1e-4,
#    TF32 off; bf16 1e-2 and the same top-1); a training step against the CPU's (1e-4) and 20
#    steps that bring the loss down.
# 2. Benchmarks, ours and PyTorch eager's in the same run on the same GPU: the shift kernel's
#    bandwidth against a device-to-device copy; R50 8x224 eval clips/s at batch 1, 16 and 64 in
#    f32 and bf16; a training step at batch 16, with where its time goes. Ours with candle's
#    CUDA convolutions and with cuDNN's (feature cudnn), PyTorch as it runs by default and as
#    its tuning guide runs it (NHWC, cudnn.benchmark).
# Results: $OUT (or target/gpu-check/results): tests.txt, bench.tsv, summary.md. Exits non-zero
# when anything failed, after running the rest.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/results}
mkdir -p "$out"
# The binaries travel compressed (bin.tar.xz); Python unpacks them, so no xz tool is needed.
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$here/bin.tar.xz" "$unpacked" || exit 1
bin=$unpacked/bin
: >"$out/bench.tsv"
failed=()
say() { echo "gpu-check: $*" >&2; }

# CUDA's user-space libraries: the machine's toolkit, or the ones PyTorch's wheels installed.
wheel_libs=$(python3 -c '
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
dirs = {os.path.dirname(p) for root in nvidia.__path__
        for p in glob.glob(os.path.join(root, "**", "lib*.so*"), recursive=True)}
print(":".join(sorted(dirs)))')
export LD_LIBRARY_PATH="${wheel_libs}${CUDA_HOME:+:$CUDA_HOME/lib64}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
missing=$(ldd "$bin/cuda_tests" "$bin/model_bench" "$bin/model_bench_cudnn" | grep "not found" | sort -u)
if [ -n "$missing" ]; then
    say "libraries not found (install PyTorch with CUDA, or set CUDA_HOME):"
    echo "$missing" >&2
    exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

say "1/2 CUDA tests"
if ! timeout 240 "$bin/cuda_tests" --test-threads=1 --nocapture 2>&1 | tee "$out/tests.txt"; then
    failed+=("cuda tests")
fi

# One measurement: `case` then the command's last stdout line (one JSON object) into bench.tsv.
measure() {
    local case=$1
    shift
    say "$case"
    local line
    if line=$(timeout 150 "$@" 2>>"$out/bench_stderr.txt" | tail -n 1) && [ -n "$line" ]; then
        printf '%s\t%s\n' "$case" "$line" >>"$out/bench.tsv"
    else
        failed+=("$case")
    fi
}

say "2/2 benchmarks"
say "shift kernel vs copy"
if ! timeout 60 "$bin/model_bench" shift 16 50 --device cuda:0 >"$out/shift.jsonl" 2>>"$out/bench_stderr.txt"; then
    failed+=("shift bench")
fi
for dtype in f32 bf16; do
    for batch in 1 16 64; do
        iters=$((batch == 1 ? 30 : (batch == 16 ? 10 : 4)))
        measure "eval $dtype b$batch tsm-rs" "$bin/model_bench" eval 50 8 224 "$batch" "$iters" --device cuda:0 --dtype "$dtype"
        measure "eval $dtype b$batch tsm-rs-cudnn" "$bin/model_bench_cudnn" eval 50 8 224 "$batch" "$iters" --device cuda:0 --dtype "$dtype"
        measure "eval $dtype b$batch pytorch" python3 "$here/torch_eager.py" eval 50 8 224 "$batch" "$iters" --device cuda:0 --dtype "$dtype"
    done
done
# PyTorch as its tuning guide runs it: NHWC and cuDNN autotuning (bf16, the larger batches)
for batch in 16 64; do
    iters=$((batch == 16 ? 10 : 4))
    measure "eval bf16 b$batch pytorch-tuned" python3 "$here/torch_eager.py" eval 50 8 224 "$batch" "$iters" --device cuda:0 --dtype bf16 --channels-last --cudnn-benchmark
done
measure "train f32 b16 tsm-rs" "$bin/model_bench" train 50 8 224 16 5 --device cuda:0 --profile
measure "train f32 b16 tsm-rs-cudnn" "$bin/model_bench_cudnn" train 50 8 224 16 5 --device cuda:0
measure "train f32 b16 pytorch" python3 "$here/torch_eager.py" train 50 8 224 16 5 --device cuda:0 --dtype f32

python3 - "$out" <<'PY' | tee "$out/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = {}
for line in (out / "bench.tsv").read_text().splitlines():
    case, js = line.split("\t", 1)
    what, engine = case.rsplit(" ", 1)
    r = json.loads(js)
    rows.setdefault(what, {})[engine] = r["clips"] / r["seconds"]
print("| PP-TSM R50 8x224, clips/s | tsm-rs | tsm-rs, cuDNN | PyTorch eager "
      "| PyTorch NHWC + cudnn.benchmark | fastest tsm-rs / fastest PyTorch |")
print("|---|---:|---:|---:|---:|---:|")
for what, e in rows.items():
    ours = [v for k, v in e.items() if k.startswith("tsm-rs")]
    torch = [v for k, v in e.items() if k.startswith("pytorch")]
    ratio = f"{max(ours) / max(torch):.2f}x" if ours and torch else "-"
    cells = [f"{e[k]:.2f}" if k in e else "-"
             for k in ("tsm-rs", "tsm-rs-cudnn", "pytorch", "pytorch-tuned")]
    print(f"| {what} | {' | '.join(cells)} | {ratio} |")
shift = out / "shift.jsonl"
if shift.exists() and shift.read_text().strip():
    print("\n| shift input | dtype | kernel GB/s | copy GB/s | kernel / copy |")
    print("|---|---|---:|---:|---:|")
    for line in shift.read_text().splitlines():
        r = json.loads(line)
        print(f"| {r['shape']} | {r['dtype']} | {r['shift_gb_s']} | {r['copy_gb_s']} | {r['ratio']:.2f} |")
PY
grep -A 14 "profile of one training step" "$out/bench_stderr.txt" | tee -a "$out/summary.md"

if [ ${#failed[@]} -gt 0 ]; then
    say "FAILED: ${failed[*]}"
    exit 1
fi
say "passed; results in $out"
