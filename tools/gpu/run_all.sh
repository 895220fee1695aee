#!/usr/bin/env bash
# The GPU runbook in one script, run ON the device machine from the repository root (see README.md here):
#
#   tools/gpu/run_all.sh                       every step below, within $BUDGET_S (540 s) in all
#   tools/gpu/run_all.sh --only profile,train  only the named steps (env and install always run)
#   tools/gpu/run_all.sh --stash               copy the carried DALI part(s) to /tmp/dali-parts, and stop
#   tools/gpu/run_all.sh --cpu-dry-run         the same steps at tiny sizes on the CPU, to check this script
#
# Steps, in order (each under `timeout`, and skipped once the budget is spent):
#   env              GPU, driver and library versions                          -> env.txt
#   install          .whl/ into /tmp/site; DALI from /tmp/dali-parts once all its parts are there
#   pytest           pytest -m gpu
#   profile          bench profile, paper net, bf16, channels_last            -> profile.json, profile_trace.json.gz
#   data             synth + prep + pca into $WORK/data (kept for later calls while the machine is warm;
#                    also run unasked when loader or train is asked for and the set is missing)
#   loader           bench loader, DALI and PyTorch, batch 256                  -> loader.json
#   train            bench train --data, bf16, channels_last                    -> train.json
#   train_compile    the same with --compile                                    -> train_compile.json
#   profile_compile  bench profile --compile                                    -> profile_compile.json
# All output also goes to $OUT/run.log: at most 8 files in $OUT, no folders (the device tool's limits).
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
SUMMARY=()
CORES=$(nproc)
if ((DRY)); then
  BUDGET_S=${BUDGET_S:-900}
  WORK=${WORK:-/tmp/alexrepro-gpu-dry}
  DEV=(--device cpu) PREC=(--precision fp32 --channels-last)
  NET=(--recipe tiny --set model.num_classes=4 --set model.width=0.125 --set model.fc_width=32 --batch-size 8)
  SYNTH=(--classes 4 --train-per-class 12 --val-per-class 2 --min-size 64 --max-size 128)
  LOADER=(--batch-size 8 --batches 4 --workers 1)
  TRAIN_STEPS=(--steps 2) PROFILE_STEPS=(--steps 2 --warmup 1) WORKERS=1
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  BUDGET_S=${BUDGET_S:-540}
  WORK=${WORK:-/tmp/alexrepro-gpu}
  DEV=(--device cuda) PREC=(--precision bf16 --channels-last)
  NET=(--recipe paper)  # the paper's net and batch (128), 1000 classes
  SYNTH=(--classes 100 --train-per-class 100 --val-per-class 10 --min-size 256 --max-size 500)
  LOADER=(--batch-size 256 --batches 38 --workers "$CORES")  # 10,000 images: 39 batches of 256
  TRAIN_STEPS=(--steps 20) PROFILE_STEPS=(--steps 10 --warmup 5) WORKERS=$CORES
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
AX=("$PY" -m alexrepro)
DATA=$WORK/data

selected() { [[ -z $ONLY || ",$ONLY," == *",$1,"* ]]; }

step() {  # step NAME MAX_SECONDS STDOUT_FILE CMD... (STDOUT_FILE "" : stdout to the log)
  local name=$1 max=$2 file=$3
  shift 3
  selected "${name%%:*}" || [[ $name == data:* ]] || return 0
  local left=$((BUDGET_S - (SECONDS - START) - 10))
  local limit=$((max < left ? max : left))
  if ((limit < 20)); then
    echo "== $name: skipped, ${left} s of the budget left"
    SUMMARY+=("$name: skipped (budget)")
    return 0
  fi
  echo "== $name (at most ${limit} s): $*"
  local t0=$SECONDS rc
  if [[ -n $file ]]; then
    timeout -k 10 "$limit" "$@" > "$OUT/$file"
  else
    timeout -k 10 "$limit" "$@"
  fi
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - t0)) s$( ((rc == 124)) && echo ' (timed out)')"
  SUMMARY+=("$name: exit $rc, $((SECONDS - t0)) s")
  return 0
}

echo "== run_all.sh $(date -u +%FT%TZ) dry-run=$DRY only=${ONLY:-all} budget=${BUDGET_S}s OUT=$OUT WORK=$WORK"

# ---- env: what ran (written first, so that a later failure still leaves it)
{
  echo "date: $(date -u +%FT%TZ)"
  echo "git: $(git rev-parse --short HEAD 2>/dev/null) + $(git status --porcelain 2>/dev/null | wc -l) changed files"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
  echo "cpu cores: $CORES"
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
SUMMARY+=("install: $((SECONDS - t0)) s")
grep -E '^(typer|nvidia.dali|torch|cuda) ' "$OUT/env.txt" | sed 's/^/   before install: /'
"$PY" -c "import typer, alexrepro; print('   typer', typer.__version__, 'alexrepro', alexrepro.__file__)" \
  || echo "== install: alexrepro does not import; the steps below will fail"
"$PY" -c "import nvidia.dali as d; print('   dali', d.__version__)" 2>/dev/null || echo "   dali: not importable"

# ---- the steps
step pytest 150 "" "$PY" -m pytest -m gpu -q -p no:cacheprovider tests

step profile 150 profile.json "${AX[@]}" bench profile "${NET[@]}" "${DEV[@]}" "${PREC[@]}" "${PROFILE_STEPS[@]}" \
  --top 20 --trace "$OUT/profile_trace.json.gz" --json

NEED_DATA=0  # the data step also runs, unasked, when a step that needs the set is asked for and it is missing
if [[ ! -f $DATA/manifest.json || ! -f $DATA/stats.h5 ]]; then
  for s in data loader train train_compile; do selected "$s" && NEED_DATA=1; done
  ((NEED_DATA)) && rm -rf "$WORK"
elif selected data; then
  echo "== data: reusing $DATA"
fi
if ((NEED_DATA)); then
  step data:synth 120 "" "${AX[@]}" synth "$WORK/src" "${SYNTH[@]}" --json
  step data:prep 90 "" "${AX[@]}" prep "$WORK/src" "$DATA" --workers "$WORKERS" --json
  step data:pca 60 "" "${AX[@]}" pca "$DATA" --workers "$WORKERS" --sample 2000 --json
fi

step loader 120 loader.json "${AX[@]}" bench loader "$DATA" --src "$WORK/src" "${LOADER[@]}" --kinds dali,torch \
  "${DEV[@]}" --json

step train 150 train.json "${AX[@]}" bench train "${NET[@]}" "${DEV[@]}" "${PREC[@]}" "${TRAIN_STEPS[@]}" \
  --data "$DATA" --workers "$WORKERS" --json

step train_compile 300 train_compile.json "${AX[@]}" bench train "${NET[@]}" "${DEV[@]}" "${PREC[@]}" \
  "${TRAIN_STEPS[@]}" --compile --data "$DATA" --workers "$WORKERS" --json

step profile_compile 200 profile_compile.json "${AX[@]}" bench profile "${NET[@]}" "${DEV[@]}" "${PREC[@]}" \
  "${PROFILE_STEPS[@]}" --compile --top 20 --json

# ---- the figures, in short (the JSON files hold everything)
echo "== summary after $((SECONDS - START)) s"
printf '   %s\n' "${SUMMARY[@]}"
"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys

out = pathlib.Path(sys.argv[1])


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


for name in ("profile.json", "profile_compile.json"):
    r = load(name)
    if r:
        print(f"{name}: {r['images_per_s']:,.0f} images/s, {1e3 * r['seconds_per_step']:.2f} ms/step, "
              f"measured {r['measured_ms_per_step']:.2f} ms/step ({r['time_counted']}), "
              f"busy {r.get('device_busy_fraction', '-')}")
        print("   kinds: " + ", ".join(f"{k} {100 * v['share']:.1f}%" for k, v in r["categories"].items()))
        print("   phases: " + ", ".join(f"{k} {100 * v['share']:.1f}%" for k, v in r["phases"].items()))
        for row in r["top"][:8]:
            print(f"   {100 * row['share']:5.1f}% {row['ms_per_step']:8.3f} ms/step {row['calls']:5d}x "
                  f"[{row['category']}] {row['name'][:100]}")
r = load("loader.json")
if r:
    rates = {k: v.get("images_per_s", v.get("error")) for k, v in r["loaders"].items()}
    print(f"loader.json: {rates}, baseline {r.get('baseline', {}).get('images_per_s')}")
for name in ("train.json", "train_compile.json"):
    r = load(name)
    if r:
        loops = {k: v["images_per_s"] for k, v in r["loops"].items()}
        print(f"{name}: images/s {loops}, ceiling {r['ceiling_images_per_s']}, overhead {r['overhead_vs_plain']}, "
              f"e2e/synthetic {r.get('end_to_end_vs_synthetic')}, vs torchvision {r.get('ours_vs_torchvision')}")
        print(f"   update fused/per-tensor/torch-sgd s {r.get('optimizer', {}).get('seconds_per_update')}, "
              f"LRN ours/autograd s {r.get('lrn', {}).get('seconds_forward_backward')}")
EOF
ls -la "$OUT"
