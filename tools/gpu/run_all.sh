#!/usr/bin/env bash
# The GPU runbook in one script, run ON the GPU machine from the repository root (see README.md here):
#
#   tools/gpu/run_all.sh                       every step below, within $BUDGET_S (480 s) in all
#   tools/gpu/run_all.sh --only profile,train  only the named steps (env and install always run)
#   tools/gpu/run_all.sh --stash               copy the carried DALI part(s) to /tmp/dali-parts, and stop
#   tools/gpu/run_all.sh --cpu-dry-run         the same steps at tiny sizes on the CPU, to check this script
#
# Steps, most valuable first (each under `timeout`, and skipped once the budget is spent):
#   env                GPU, driver, kernel and library versions                              -> env.txt
#   install            .whl/ into /tmp/site; DALI from /tmp/dali-parts once all its parts are there
#   pytest             pytest -m gpu (the Triton LRN against the formula, CUDA training, DALI on the GPU)
#   profile            bench profile, paper net, bf16, channels_last, run.lrn_kernel=triton -> profile_trace.json.gz
#   lrn                bench lrn: the LRN layers alone, each implementation against the memory-traffic floor
#   curves             bench curves: 200 steps of the paper recipe, Triton LRN vs torch LRN, same seed
#   data               synth + prep + pca (JPEG shards), prep + pca (raw shards) into $WORK (kept while warm;
#                      also run unasked when a step that needs the set is asked for and it is missing)
#   train_compile      bench train --compile: ours, plain loop, torchvision's AlexNet, end to end (--data)
#   train              the same, eager
#   loader             bench loader --stages --passes 2 on the JPEG set; DALI settings (--dali-variant), then the
#                      default again
#   profile_torch      bench profile, eager, run.lrn_kernel=torch (the step before the kernel)
#   loader_raw         bench loader --stages on the raw set
#   conv               bench conv: grouped conv2/4/5 vs the same FLOPs ungrouped and two convolutions
#   mp                 train --gpus 2 --parallel model with both towers on cuda:0 (ALEXREPRO_TOWER_DEVICES)
#   spread             each loader alone, 3 processes each (2 passes), taking turns; one cold-cache run
#   profile_compile    bench profile --compile, Triton LRN
#   profile_compile_torch  bench profile --compile, torch LRN
# Each step's JSON goes to $WORK/results; tools/gpu/summary.py gathers them after every step into $OUT:
# run.log, env.txt, profile_trace.json.gz, profile.json, train.json, loader.json, other.json, summary.json
# (8 files, no folders: what a call to the GPU machine brings back). The log ends with the figures against
# the targets.
set -uo pipefail

DRY=0 STASH=0 ONLY=""
while (($#)); do
  case $1 in
    --cpu-dry-run) DRY=1 ;;
    --stash) STASH=1 ;;
    --only) ONLY=$2; shift ;;
    --only=*) ONLY=${1#--only=} ;;
    -h|--help) sed -n '2,/^set -uo/{/^#/p}' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/../.." || exit 2
PY=${PYTHON:-python3}
PARTS_DIR=/tmp/dali-parts
SITE=${SITE:-/tmp/site}

stash() {  # copy the DALI parts this call carried to $PARTS_DIR (they stay while the machine is warm)
  mkdir -p "$PARTS_DIR"
  local f
  for f in .whl-dali/part*/*; do
    [[ -e $f ]] && cp "$f" "$PARTS_DIR/"
  done
  local have need=?
  have=$(find "$PARTS_DIR" -name 'dali-site.tar.xz.*' | wc -l)
  [[ -f $PARTS_DIR/PARTS ]] && need=$(cut -d' ' -f1 "$PARTS_DIR/PARTS")
  echo "stash: $have of $need DALI parts in $PARTS_DIR: $(cd "$PARTS_DIR" && ls dali-site.tar.xz.* 2>/dev/null | tr '\n' ' ')"
}
if ((STASH)); then stash; exit 0; fi

if [[ -z ${OUT:-} ]]; then
  if ((DRY)); then OUT=/tmp/gpu_dry; else echo "run_all.sh: set OUT to a folder for the results" >&2; exit 2; fi
fi
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1
START=$SECONDS
CORES=$(nproc)
KT=(--set run.lrn_kernel=triton) KTORCH=(--set run.lrn_kernel=torch) KT_COMPILED=(--set run.lrn_kernel=triton)
VARIANTS=()  # DALI settings timed beside the default (DaliTuning; the default hw_decoder_load is DALI's 0.65)
for v in hw_decoder_load=0 hw_decoder_load=0.9 hw_decoder_load=1 roi_decode=true prefetch=4 source_depth=32 \
         bytes_per_sample_hint=196608 threads=8 py_workers=8 per_sample=true; do VARIANTS+=(--dali-variant "$v"); done
if ((DRY)); then
  BUDGET_S=${BUDGET_S:-2400} SCALE=4  # a CPU compiles far slower than the device's 16 cores: longer limits
  WORK=${WORK:-/tmp/alexrepro-gpu-dry}
  DEV=(--device cpu) PREC=(--precision fp32 --channels-last) CUDA=cpu TOWERS=cpu,cpu MP_GPUS=1
  SMALL=(--set model.num_classes=4 --set model.width=0.125 --set model.fc_width=32)
  NET=(--recipe tiny "${SMALL[@]}" --batch-size 8)
  SYNTH=(--classes 4 --train-per-class 12 --val-per-class 2 --min-size 64 --max-size 128)
  LOADER=(--batch-size 8 --batches 4 --workers 1)
  TRAIN_STEPS=(--steps 2) PROFILE_STEPS=(--steps 2 --warmup 1) CURVES=(--steps 20 --batches 2) WORKERS=1
  CONV=(--recipe tiny --set model.width=0.125 --batch-size 4 --steps 2 --rounds 1)
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  export TRITON_INTERPRET=1  # Triton kernels (run.lrn_kernel=triton) run in its interpreter on the CPU,
  KT_COMPILED=(--set run.lrn_kernel=auto)  # but not under torch.compile's fake tensors: the torch path there
else
  BUDGET_S=${BUDGET_S:-480} SCALE=1
  WORK=${WORK:-/tmp/alexrepro-gpu}
  DEV=(--device cuda) PREC=(--precision bf16 --channels-last) CUDA=cuda TOWERS=cuda:0,cuda:0 MP_GPUS=2
  NET=(--recipe paper)  # the paper's net and batch (128), 1000 classes
  SYNTH=(--classes 100 --train-per-class 100 --val-per-class 10 --min-size 256 --max-size 500)
  LOADER=(--batch-size 256 --batches 38 --workers "$CORES")  # 10,000 images: 39 batches of 256
  TRAIN_STEPS=(--steps 20) PROFILE_STEPS=(--steps 10 --warmup 5) CURVES=(--steps 200 --batches 8) WORKERS=$CORES
  CONV=(--recipe paper --steps 10 --rounds 3)
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
AX=("$PY" -m alexrepro)
DATA=$WORK/data DATA_RAW=$WORK/data-raw RES=$WORK/results
rm -rf "$RES" && mkdir -p "$RES"

selected() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

step() {  # step NAME MAX_SECONDS OUTPUT CMD...   OUTPUT: "" (the log), NAME.json (stdout to $RES), NAME.txt (tee'd)
  local name=$1 max=$2 file=$3
  shift 3
  selected "${name%%:*}" || [[ $name == data:* ]] || return 0
  local left=$((BUDGET_S - (SECONDS - START) - 10))
  max=$((max * SCALE))
  local limit=$((max < left ? max : left))
  if ((limit < 20)); then
    echo "== $name: skipped, ${left} s of the budget left"
    printf '%s\tskipped\t0\n' "$name" >> "$RES/steps.tsv"
    return 0
  fi
  echo "== $name (at most ${limit} s): $*"
  local t0=$SECONDS rc
  case $file in
    "") timeout -k 10 "$limit" "$@" ;;
    *.txt) timeout -k 10 "$limit" "$@" | tee "$RES/$file" ;;
    *) timeout -k 10 "$limit" "$@" > "$RES/$file" ;;
  esac
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s$( ((rc == 124)) && echo ' (timed out)')"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$RES/steps.tsv"
  "$PY" tools/gpu/summary.py "$RES" "$OUT" --quiet || echo "== summary.py failed"
  return 0
}

echo "== run_all.sh $(date -u +%FT%TZ) dry-run=$DRY only=${ONLY:-all} budget=${BUDGET_S}s OUT=$OUT WORK=$WORK"

# ---- env: what ran (written first, so that a later failure still leaves it)
{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) + $(git status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  echo "cpu cores: $CORES, kernel $(uname -r), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null)"
  "$PY" - <<'EOF' 2>&1
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "torchvision", "triton", "numpy", "h5py", "PIL", "rich", "typer", "nvidia.dali"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as e:  # noqa: BLE001 - a report of what is missing
        print(name, "MISSING", type(e).__name__, e)
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("cudnn", torch.backends.cudnn.version())
EOF
} > "$OUT/env.txt"

# ---- install: the carried wheels, then DALI once every part is in /tmp/dali-parts
t0=$SECONDS
if ((DRY)); then
  echo "== install: dry run, nothing installed (the wheels are for the device's Python 3.12)"
  ls .whl/*.whl 2>/dev/null | sed 's/^/   would install /'
else
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
      || echo "== install: pip failed on .whl/"
  fi
fi
if compgen -G ".whl-dali/part*" > /dev/null || [[ -d $PARTS_DIR ]]; then
  stash
  if [[ -f $SITE/.dali-installed ]]; then
    echo "== install: DALI already unpacked into $SITE"
  elif [[ -f $PARTS_DIR/PARTS ]]; then
    read -r need sum < "$PARTS_DIR/PARTS"
    have=$(find "$PARTS_DIR" -name 'dali-site.tar.xz.*' | wc -l)
    if ((have == need)); then
      cat "$PARTS_DIR"/dali-site.tar.xz.* > /tmp/dali-site.tar.xz
      if [[ $(sha256sum /tmp/dali-site.tar.xz | cut -d' ' -f1) != "$sum" ]]; then
        echo "== install: the joined DALI parts do not match their sha256; carry them again"
      elif ((DRY)); then
        echo "== install: dry run: the $need DALI parts join and match their sha256; not unpacked"
      else
        mkdir -p "$SITE" && "$PY" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" \
          /tmp/dali-site.tar.xz "$SITE" && touch "$SITE/.dali-installed" && echo "== install: DALI unpacked into $SITE"
        # The cu12 wheels bring an nvidia/__init__.py; first on PYTHONPATH it would hide the device's own
        # nvidia.* packages (torch's CUDA libraries). Extend it over every nvidia/ folder on the path instead.
        printf 'from pkgutil import extend_path\n\n__path__ = extend_path(__path__, __name__)\n' \
          > "$SITE/nvidia/__init__.py"
      fi
      rm -f /tmp/dali-site.tar.xz
    else
      echo "== install: $have of $need DALI parts; DALI is not installed (the loaders fall back to PyTorch)"
    fi
  fi
fi
printf 'install\t0\t%s\n' "$((SECONDS - t0))" >> "$RES/steps.tsv"
grep -E '^(typer|nvidia.dali|torch|cuda) ' "$OUT/env.txt" | sed 's/^/   before install: /'
"$PY" -c "import typer, alexrepro; print('   typer', typer.__version__, 'alexrepro', alexrepro.__file__)" \
  || echo "== install: alexrepro does not import; the steps below will fail"
"$PY" -c "import nvidia.dali as d; print('   dali', d.__version__)" 2>/dev/null || echo "   dali: not importable"

# ---- the steps, most valuable first
step pytest 150 pytest.txt "$PY" -m pytest -m gpu -q -p no:cacheprovider tests

step profile 90 profile.json "${AX[@]}" bench profile "${NET[@]}" "${KT[@]}" "${DEV[@]}" "${PREC[@]}" \
  "${PROFILE_STEPS[@]}" --top 20 --trace "$OUT/profile_trace.json.gz" --json

step lrn 75 lrn.json "${AX[@]}" bench lrn "${NET[@]}" "${DEV[@]}" "${PREC[@]}" --json

step curves 90 curves.json "${AX[@]}" bench curves "${NET[@]}" "${DEV[@]}" "${PREC[@]}" "${CURVES[@]}" \
  --variant run.lrn_kernel=triton --variant run.lrn_kernel=torch --json

NEED_DATA=0  # the data step also runs, unasked, when a step that needs the set is asked for and it is missing
if [[ ! -f $DATA/stats.h5 || ! -f $DATA_RAW/stats.h5 ]]; then
  for s in data train train_compile loader loader_raw spread; do selected "$s" && NEED_DATA=1; done
elif selected data; then
  echo "== data: reusing $DATA and $DATA_RAW"
fi
if ((NEED_DATA)); then
  rm -rf "$WORK/src" "$DATA" "$DATA_RAW"
  step data:synth 90 data_synth.json "${AX[@]}" synth "$WORK/src" "${SYNTH[@]}" --json
  step data:prep 60 data_prep.json "${AX[@]}" prep "$WORK/src" "$DATA" --workers "$WORKERS" --json
  step data:pca 30 data_pca.json "${AX[@]}" pca "$DATA" --workers "$WORKERS" --sample 2000 --json
  step data:prep_raw 60 data_prep_raw.json "${AX[@]}" prep "$WORK/src" "$DATA_RAW" --split train --encoding raw \
    --workers "$WORKERS" --json
  step data:pca_raw 30 data_pca_raw.json "${AX[@]}" pca "$DATA_RAW" --workers "$WORKERS" --sample 2000 --json
fi
E2E=()  # end to end only where the set is there (a failed data step leaves the synthetic figures)
[[ -f $DATA/stats.h5 ]] && E2E=(--data "$DATA" --workers "$WORKERS")

step train_compile 240 train_compile.json "${AX[@]}" bench train "${NET[@]}" "${DEV[@]}" "${PREC[@]}" \
  "${TRAIN_STEPS[@]}" --compile "${E2E[@]}" --json

step train 120 train.json "${AX[@]}" bench train "${NET[@]}" "${DEV[@]}" "${PREC[@]}" "${TRAIN_STEPS[@]}" \
  "${E2E[@]}" --json

step loader 150 loader.json "${AX[@]}" bench loader "$DATA" --src "$WORK/src" "${LOADER[@]}" --kinds dali,torch \
  "${DEV[@]}" --stages --passes 2 "${VARIANTS[@]}" --json

step profile_torch 90 profile_torch.json "${AX[@]}" bench profile "${NET[@]}" "${KTORCH[@]}" "${DEV[@]}" \
  "${PREC[@]}" "${PROFILE_STEPS[@]}" --top 20 --json

step loader_raw 90 loader_raw.json "${AX[@]}" bench loader "$DATA_RAW" "${LOADER[@]}" --kinds dali,torch \
  "${DEV[@]}" --stages --json

step conv 90 conv.json "${AX[@]}" bench conv "${CONV[@]}" "${DEV[@]}" "${PREC[0]}" "${PREC[1]}" --json

if selected mp; then  # a tiny set of its own; both towers of §3.2's split on the one device
  rm -rf "$WORK/mp"
  step mp:synth 30 mp_synth.json "${AX[@]}" synth "$WORK/mp/src" --classes 4 --train-per-class 32 --val-per-class 4 \
    --min-size 128 --max-size 160 --json
  step mp:prep 30 mp_prep.json "${AX[@]}" prep "$WORK/mp/src" "$WORK/mp/data" --workers "$WORKERS" --json
  step mp:pca 30 mp_pca.json "${AX[@]}" pca "$WORK/mp/data" --json
  step mp:train 90 mp_train.json env ALEXREPRO_TOWER_DEVICES="$TOWERS" "${AX[@]}" train "$WORK/mp/data" \
    --recipe tiny --set model.num_classes=4 --device "$CUDA" --gpus "$MP_GPUS" \
    --parallel model --epochs 1 --run "$WORK/mp/run" --no-progress --json
fi

for i in 1 2 3; do  # each loader alone in its own process, taking turns: the PyTorch loader's spread
  for kind in torch dali; do
    step "spread:${kind}_$i" 45 "spread_${kind}_$i.json" "${AX[@]}" bench loader "$DATA" "${LOADER[@]}" \
      --kinds "$kind" "${DEV[@]}" --passes 2 --json
  done
done
step spread:torch_cold 45 spread_torch_cold.json "${AX[@]}" bench loader "$DATA" "${LOADER[@]}" --kinds torch \
  "${DEV[@]}" --passes 2 --cold --json

step profile_compile 150 profile_compile.json "${AX[@]}" bench profile "${NET[@]}" "${KT_COMPILED[@]}" "${DEV[@]}" \
  "${PREC[@]}" "${PROFILE_STEPS[@]}" --compile --top 20 --json

step profile_compile_torch 150 profile_compile_torch.json "${AX[@]}" bench profile "${NET[@]}" "${KTORCH[@]}" \
  "${DEV[@]}" "${PREC[@]}" "${PROFILE_STEPS[@]}" --compile --top 20 --json

# ---- the figures, in short (the JSON files in $OUT hold everything)
echo "== summary after $((SECONDS - START)) s of a ${BUDGET_S} s budget"
column -t -s $'\t' "$RES/steps.tsv" 2>/dev/null | sed 's/^/   /' || sed 's/^/   /' "$RES/steps.tsv"
"$PY" tools/gpu/summary.py "$RES" "$OUT"
ls -la "$OUT"
