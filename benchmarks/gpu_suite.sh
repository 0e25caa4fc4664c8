#!/usr/bin/env bash
# Issue #11's GPU checks in ONE call of a lent GPU machine (H100 / H200), about 7 minutes.
#
#   1. the CUDA tests: the training step never synchronises (tests/test_cuda.py), attention
#      backends (tests/test_attention.py)
#   2. pretrain_step.py: ViT-S/16 and ViT-B/16 at 112 and 224 px, batch 64, bf16, fused AdamW,
#      16 loader workers, on generated ~500x375 JPEGs: step time, images/s, memory, MFU
#   3. curriculum_speed.py: vitb16-in1k stage 1 (112/48) vs stage 2 (224/96) side by side,
#      synthetic and end to end through the real loader, next to the FLOPs ratio
#   4. data_pipeline.py: images/s of one loader worker, exact vs reduced-scale decode
#   5. pretrain_step.py again for ViT-B/16 at 112 with model.compile=true (compile on or off?)
#
# Every JSON line and the log go to $OUT (the device tool's folder; default benchmarks/results/gpu)
# as at most 8 files. Copy the JSON lines to benchmarks/results/<script>_<gpu>_<what>.json and
# update the table in benchmarks/README.md.
#
# The device image has torch and accelerate but not pydantic. On THIS machine, once per
# checkout, fetch the missing wheels (Python 3.12, x86-64) into the git-ignored .whl/:
#     bash benchmarks/gpu_suite.sh --fetch-wheels
# then call the device tool with  command="bash benchmarks/gpu_suite.sh", carry=[".whl"],
# timeout_s=600. Set GPU_SUITE_QUICK=1 to run every part for a step or two (a plumbing check
# that also runs on a CPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."

WHEELS=(pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
        typing_extensions==4.16.0)
if [ "${1:-}" = "--fetch-wheels" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore ||
        echo '/.whl/' >> .git/info/exclude
    exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
log="$out/suite.log"
exec > >(tee -a "$log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
py=${PYTHON:-python3}
gpu=$($py -c "import torch; print(torch.cuda.get_device_name(0).split()[-1].lower() if torch.cuda.is_available() else 'cpu')")
quick=${GPU_SUITE_QUICK:-0}
if [ "$quick" = 1 ]; then
    n_jpegs=16 steps=(--steps 2 --warmup 1) batch=4 workers=1 archs=(vit_small)
    cs=(--steps 1 --warmup 0) dp=(--images 4 --rounds 1)
else
    n_jpegs=512 steps=(--steps 20 --warmup 5) batch=64 workers=16 archs=(vit_small vit_base)
    cs=(--steps 10 --warmup 3) dp=(--images 48 --rounds 5)
fi
jpegs=/tmp/gpu_suite_jpegs  # ImageNet-like ~500x375 JPEGs from scikit-image photographs
rm -rf "$jpegs" && mkdir -p "$jpegs"
$py -c "import sys; from pathlib import Path; from benchmarks.data_pipeline import make_jpegs; make_jpegs(Path(sys.argv[1]), int(sys.argv[2]))" "$jpegs" "$n_jpegs"
images=(--data "$jpegs")
echo "== gpu_suite on $gpu ($(date -u +%FT%TZ)), quick=$quick"
$py -c "import torch, accelerate, pydantic; print('torch', torch.__version__, 'accelerate', accelerate.__version__, 'pydantic', pydantic.__version__)"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv 2>/dev/null

echo "== 1. CUDA tests"
$py -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_attention.py 2>&1 | tail -15

echo "== 2. pretrain_step"
$py benchmarks/pretrain_step.py --arch "${archs[@]}" --size 112 224 --batch "$batch" \
    --workers "$workers" "${images[@]}" "${steps[@]}" --out "$out/pretrain_step_$gpu.json" \
    2> "$out/pretrain_step.err" || tail -20 "$out/pretrain_step.err"

echo "== 3. curriculum_speed"
$py benchmarks/curriculum_speed.py --preset vitb16-in1k "train.batch_size_per_gpu=$batch" \
    --workers "$workers" "${cs[@]}" --images "$jpegs" --label "gpu_suite $gpu" \
    --out "$out/curriculum_speed_${gpu}_vitb16.json" 2>&1 | tail -3

echo "== 4. data_pipeline"
$py benchmarks/data_pipeline.py "${dp[@]}" --out "$out/data_pipeline_$gpu.json" 2>&1 | tail -3

echo "== 5. pretrain_step with model.compile=true"
$py benchmarks/pretrain_step.py --arch vit_base --size 112 --batch "$batch" --workers "$workers" \
    "${images[@]}" "${steps[@]}" --out "$out/pretrain_step_${gpu}_compile.json" \
    model.compile=true 2> "$out/compile.err" || tail -20 "$out/compile.err"

echo "== summary"
$py - "$out" <<'EOF'
import json, sys
from pathlib import Path

for path in sorted(Path(sys.argv[1]).glob("*.json")):
    d = json.loads(path.read_text())
    for r in d.get("runs", []):
        print(f"{path.name}: {r['arch']} {r['global_crops_size']}px b{r['batch_size']} "
              f"{r['step_s']}s/step {r['images_per_s']} img/s mfu {r['mfu']} "
              f"(compute {r['mfu_compute']}) wait {r['data_wait']} compile {r['compile']}")
    if "flops_ratio" in d:
        print(f"{path.name}: flops ratio {d['flops_ratio']}, wall ratio synthetic "
              f"{d['step_time_ratio_synthetic']} / end to end {d['wall_clock_ratio_end_to_end']}"
              f" -> wall/flops {d['wall_over_flops_ratio']} "
              f"within 15%: {d['target_within_15pct_of_flops_ratio']}")
    if "stages" in d and "flops_ratio" not in d:
        print(f"{path.name}: {json.dumps(d['stages'])[:300]}")
EOF
