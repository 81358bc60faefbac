#!/usr/bin/env bash
# GPU measurement for issue 15, in ONE run: trained checkpoint, network / training / end-to-end benchmark sections
# (fp32 baseline beside bf16 + channels_last, with and without torch.compile), the bundle's own inference on a
# folder of 512x512x200 int16 CTs with per-stage times, a short training in the bundle's SupervisedTrainer loop on
# the memory-mapped cache, and the DDP overlay under torchrun with NCCL (world size 1). $OUT (default ./gpu_results)
# receives 7 files: results.md (tables with the card, torch version, date), bench_{ckpt,full,compile}.json,
# device.txt, steps.log and logs.tar.gz; volumes, checkpoints and outputs stay in $WORK (default /tmp/pipofan_gpu).
# With the device tool: run(command="bash benchmarks/gpu.sh", carry=[".whl"], timeout_s=540).
#
#   bash benchmarks/gpu.sh                 # on the GPU machine (wheels in .whl: bash benchmarks/fetch_wheels.sh)
#   DEVICE=cpu QUICK=1 PY=.venv/bin/python bash benchmarks/gpu.sh   # dry run of every step on a CPU (tiny sizes)
#
# Env: CKPT (a trained model.pt; default: train the quick start first), DEVICE (cuda), QUICK (0), OUT, WORK, PY.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_results}"; WORK="${WORK:-/tmp/pipofan_gpu}"; mkdir -p "$OUT" "$WORK"
DEVICE="${DEVICE:-cuda}"; QUICK="${QUICK:-0}"
export PYTHONUNBUFFERED=1
if [ -d .whl ] && ! "${PY:-python3}" -c "import monai" 2>/dev/null; then
  "${PY:-python3}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PY:-python3}"
TIMEV=""; [ -x /usr/bin/time ] && TIMEV="/usr/bin/time -v"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/steps.log"; }
$PY - <<'PY' | tee "$OUT/device.txt"
import torch, platform
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu")
PY
if [ "$QUICK" = 1 ]; then
  EPOCHS=2; VOLS=2; SHAPE="[96,96,20]"; BENCH_Q="--quick True"
  FULL="--network_channels [8,16,32,64,64] --spatial_size 64 --roi_size 48 --samples_per_epoch 16 --batch_size 4 --num_workers 0"
else
  EPOCHS=60; VOLS=5; SHAPE="[512,512,200]"; BENCH_Q=""
  FULL="--samples_per_epoch 2048 --batch_size 32 --num_workers 6"
fi

# 1. a trained checkpoint (the quick start, short), unless given
if [ -z "${CKPT:-}" ]; then
  log "training a quick-start checkpoint ($EPOCHS epochs) on $DEVICE"
  $PY -m monai.bundle run training --config_file "['bundle/configs/train.json','bundle/configs/quickstart.json']" \
      --device "\$torch.device('$DEVICE')" --max_epochs $EPOCHS --dps_epochs $((EPOCHS / 2)) --val_interval $EPOCHS \
      --ckpt_dir "$WORK/models" --output_dir "$WORK/runs" --demo_dir "$WORK/demo" > "$WORK/train_quickstart.log" 2>&1
  CKPT="$WORK/models/model.pt"
fi

# 2. benchmark sections: inference, training, end to end, data path (each beside its fp32 baseline)
log "benchmark (network from the checkpoint's plans; label agreement on the training intensities)"
$PY -m pipofan_monai benchmark --device "$DEVICE" --ckpt "$CKPT" $BENCH_Q --output "$OUT/bench_ckpt.json" > "$WORK/bench_ckpt.log" 2>&1
log "benchmark, full-width random network, eager and torch.compile"
$PY -m pipofan_monai benchmark --device "$DEVICE" $BENCH_Q --sections "[inference,training,end_to_end]" \
    --output "$OUT/bench_full.json" > "$WORK/bench_full.log" 2>&1
$PY -m pipofan_monai benchmark --device "$DEVICE" $BENCH_Q --compile True --sections "[inference,training]" \
    --output "$OUT/bench_compile.json" > "$WORK/bench_compile.log" 2>&1

# 3. the bundle's own inference on a folder of CTs, load to saved label map
log "bundle inference on $VOLS volumes of $SHAPE"
$PY - "$WORK/cts" "$VOLS" "$SHAPE" <<'PY'
import ast, sys, os, nibabel as nib
from pipofan_monai.apps.dataset_conversion.demo import synthesize_case
out, n, shape = sys.argv[1], int(sys.argv[2]), tuple(ast.literal_eval(sys.argv[3]))
os.makedirs(out, exist_ok=True)
for i in range(n):
    img, _, affine = synthesize_case(100 + i, shape=shape)
    nib.save(nib.Nifti1Image(img.astype("int16"), affine), os.path.join(out, f"ct{i}.nii.gz"))
PY
$TIMEV $PY -m monai.bundle run inference --config_file bundle/configs/inference.json --ckpt_path "$CKPT" \
    --dataset_dir "$WORK/cts" --output_dir "$WORK/seg" --save_overlay False --device "\$torch.device('$DEVICE')" \
    > "$WORK/bundle_inference.log" 2>&1

# 4. training in the bundle's SupervisedTrainer loop on the memory-mapped cache (real-size volumes)
log "bundle training loop, mmap cache, full width"
$PY -m monai.bundle run training --config_file bundle/configs/train.json --datalist "$WORK/demo/datalist.json" \
    --device "\$torch.device('$DEVICE')" --max_epochs 2 --dps_epochs 1 --val_interval 2 $FULL \
    --max_val_volumes 1 --progress_bar False \
    --ckpt_dir "$WORK/models_full" --output_dir "$WORK/runs_full" > "$WORK/train_full.log" 2>&1 || log "full training FAILED (see train_full.log)"

# 5. DDP overlay with NCCL, world size 1
if [ "$DEVICE" = cuda ]; then
  log "torchrun NCCL world size 1"
  torchrun --standalone --nnodes=1 --nproc_per_node=1 -m monai.bundle run training \
      --config_file "['bundle/configs/train.json','bundle/configs/quickstart.json','bundle/configs/multi_gpu_train.json']" \
      --max_epochs 2 --dps_epochs 1 --val_interval 2 --ckpt_dir "$WORK/models_ddp" --output_dir "$WORK/runs_ddp" \
      --demo_dir "$WORK/demo" > "$WORK/ddp.log" 2>&1 || log "DDP FAILED (see ddp.log)"
fi

# 6. the table
$PY - "$OUT" "$WORK" <<'PY' > "$OUT/results.md"
import json, sys, os, datetime, re
out, work = sys.argv[1], sys.argv[2]
print(f"# GPU results ({datetime.date.today()})\n\n" + open(os.path.join(out, "device.txt")).read())
for name in ("bench_ckpt", "bench_full", "bench_compile"):
    p = os.path.join(out, name + ".json")
    if os.path.exists(p):
        print(f"\n## {name}\n")
        print(json.load(open(p)).get("table", "(no table)"))
log = open(os.path.join(work, "bundle_inference.log")).read()
print("\n## bundle inference (per case)\n")
print("\n".join(l for l in log.splitlines() if re.search(r"\] ct\d+: shape|done in|Maximum resident", l)))
for f in ("train_full.log", "ddp.log"):
    p = os.path.join(work, f)
    if os.path.exists(p):
        print(f"\n## {f}\n")
        print("\n".join(l for l in open(p).read().splitlines() if "epoch" in l and ("ETA" in l or "loss" in l))[-2000:])
PY
tar -czf "$OUT/logs.tar.gz" -C "$WORK" $(cd "$WORK" && ls *.log)
log "done: $OUT/results.md"
