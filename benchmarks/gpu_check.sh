#!/usr/bin/env bash
# One GPU check, ~8 minutes on one GPU, everything written to $OUT (default ./gpu_check_out):
#   1. environment (GPU, driver, torch);
#   2. fine-tuning epoch time, perovskites (all 18,928) and mp36k (8,000): the original CGCNN loop,
#      ours streaming per-crystal batches (the old path) and ours with the data resident on the GPU;
#   2b. 6 fine-tuning members (8,000 perovskites) trained together (stacked weights) vs one after another,
#       and the same for 6 GATGNN members (4,000 perovskites);
#   2c. the fine-tuning epoch of each encoder (CGCNN, GIN, GATGNN, OGCNN) on all perovskites (issue 14);
#   3. one pre-training epoch over the corpus files in .device/data (cache build timed separately);
#   4. `crystaltwins bench --preset paper --pretrained crystal-twins` on as many tasks and seeds as fit
#      in what is left of BUDGET_S (bench resumes: rerun to continue).
# Prepare on the CPU machine first:  ../shared/tools/device_prep.sh perovskites mp36k hoip mp_elasticity
# and run it with `.device` carried:   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
BUDGET_S=${BUDGET_S:-470}
DATA=${DATA:-.device/data}
REF=${REF:-.device/ref}
start=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - start))); }
mkdir -p "$OUT"
if [ -d .device/whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .device/whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD/src
else
  export PYTHONPATH=$PWD/src
fi
export PYTHONUNBUFFERED=1 CRYSTALTWINS_CACHE=/tmp/ctcache
log="$OUT/gpu_check.log"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'lightning', lightning.__version__)"
} 2>&1 | tee "$log"

echo "== fine-tuning epoch (2 timed epochs after the first)" | tee -a "$log"
timeout $(( $(left) / 2 )) python3 benchmarks/bench_finetune_epoch.py --accelerator gpu --threads 8 \
  --data-root "$DATA" --reference "$REF" --epochs 3 \
  --sets perovskites:e_form:all mp36k:formation_energy_per_atom:8000 2>&1 | grep -v Warning | tee -a "$log"

echo "== 6 fine-tuning members together vs one after another (8,000 perovskites)" | tee -a "$log"
timeout $(( $(left) / 4 )) python3 benchmarks/bench_members.py --accelerator gpu --threads 16 \
  --data-root "$DATA" --crystals 8000 --members 6 --epochs 3 --repeat 1 2>&1 | grep -v Warning | tee -a "$log"
echo "== 6 GATGNN members together vs one after another (4,000 perovskites)" | tee -a "$log"
timeout $(( $(left) / 8 )) python3 benchmarks/bench_members.py --accelerator gpu --threads 16 \
  --data-root "$DATA" --crystals 4000 --members 6 --epochs 2 --repeat 1 --encoder gatgnn 2>&1 | grep -v Warning | tee -a "$log"

echo "== each encoder's fine-tuning epoch (all perovskites, data on the GPU)" | tee -a "$log"
timeout $(( $(left) / 5 )) python3 benchmarks/bench_finetune_epoch.py --accelerator gpu --threads 8 \
  --data-root "$DATA" --epochs 3 --ours-only --encoders gin gatgnn ogcnn \
  --sets perovskites:e_form:all 2>&1 | grep -v Warning | tee -a "$log"

echo "== pre-training epoch over $(ls "$DATA"/*.csv.gz | wc -l) corpus files" | tee -a "$log"
t0=$(date +%s)
python3 -m crystaltwins.cli.main featurize "$DATA"/perovskites.csv.gz --out /tmp/warm --workers 16 >/dev/null 2>&1 || true
for f in "$DATA"/*.csv.gz; do
  python3 -m crystaltwins.cli.main featurize "$f" --out "/tmp/feat-$(basename "$f" .csv.gz)" --workers 16 2>&1 | tail -1
done | tee -a "$log"
echo "cache build: $(( $(date +%s) - t0 )) s" | tee -a "$log"
timeout $(( $(left) / 2 )) python3 -m crystaltwins.cli.main pretrain /tmp/feat-* --out /tmp/pre \
  --epochs 1 --no-progress --atom-init "$REF/atom_init.json" 2>&1 | tail -3 | tee -a "$log"
cp /tmp/pre/history.csv "$OUT/pretrain_history.csv" 2>/dev/null
python3 - <<'PY' 2>&1 | tee -a "$log"
import torch
p = "/tmp/pre/model.pt"
try:
    info = torch.load(p, weights_only=True, map_location="cpu")
    print("pre-training seconds:", {k: v for k, v in info.get("info", {}).items() if k in ("seconds", "crystals")})
except Exception as e:
    print("no pre-training model:", e)
PY

echo "== bench --preset paper ($(left) s left)" | tee -a "$log"
if [ "$(left)" -gt 30 ]; then
  timeout "$(left)" python3 -m crystaltwins.cli.main bench --preset paper --pretrained crystal-twins \
    --data-root "$DATA" --out /tmp/bench --seeds 3 --accelerator gpu --featurize-workers 16 \
    --tasks perovskites hoip gvrh mp_formation_energy mp_band_gap mp_fermi_energy 2>&1 | grep -v Warning | tail -20 | tee -a "$log"
fi
tar czf "$OUT/bench_runs.tgz" --exclude='*.ckpt' --exclude='*.pt' -C /tmp bench 2>/dev/null
echo "done in $(( $(date +%s) - start )) s" | tee -a "$log"
