#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), in the repository: downloads every wheel the GPU machine
# lacks, for its platform (x86-64, CPython 3.12), into two git-ignored folders that device calls carry:
#
#   .whl/                 the CLI's wheels (typer and what it needs; a few MiB): carry it with run_all.sh
#   .whl-dali/partNN/     nvidia-dali-cuda120 and its CUDA libraries (500 MiB of wheels), installed here with
#                         `pip install --target` for the device's platform, packed as one tar.xz (about
#                         290 MiB: xz shrinks the CUDA code that the wheels' zip leaves large) and split into
#                         parts of $PART_MIB MiB, one part per device call (a call carries at most 64 MiB);
#                         each part folder holds PARTS (the count and the sha256 of the whole tar.xz)
#
# On the device, tools/gpu/run_all.sh --stash copies the carried part to /tmp/dali-parts; once all are
# there, run_all.sh joins them with cat, checks the sha256 and unpacks them into /tmp/site (README.md).
# The device has torch, torchvision, numpy, h5py, rich, pillow, scipy, matplotlib, pyyaml, six, packaging
# and wheel, so those are not fetched. Versions are pinned to what the test environment (`nox -s tests`,
# `pip freeze`) runs. Usage: tools/gpu/fetch_wheels.sh [--no-dali]
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-python3}
PART_MIB=${PART_MIB:-60}  # + the working tree (about 1 MiB) must stay under a call's 64 MiB

# The CLI: typer and its needs. The device has a typer too, of unknown version; ours goes first on PYTHONPATH.
CLI_WHEELS=(
  typer==0.29.2 annotated-doc==0.0.7 shellingham==1.5.4
  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0
)
# DALI (the `dali` extra of pyproject.toml) with what it requires and the nvimgcodec codecs it decodes with.
DALI_WHEELS=(
  nvidia-dali-cuda120==2.4.0
  nvidia-nvimgcodec-cu12==0.9.0.20 nvidia-nvjpeg-cu12==12.4.0.76 nvidia-nvjpeg2k-cu12==0.11.0.51
  nvidia-nvtiff-cu12==0.8.0.82 nvidia-libnvcomp-cu12==5.3.0.16
  astunparse==1.6.3 gast==0.7.0 libcst==1.9.0 makefun==1.16.0 nvtx==0.2.17 optree==0.20.0
)

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
for pattern in /.whl/ /.whl-dali/; do
  grep -qxF "$pattern" "$exclude" 2>/dev/null || echo "$pattern" >> "$exclude"
done

download() {  # download DEST NAME==VERSION...
  local dest=$1; shift
  mkdir -p "$dest"
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$dest" "$@"
}

rm -rf .whl && download .whl "${CLI_WHEELS[@]}"
echo "fetch_wheels: .whl/ $(ls .whl | wc -l) wheels, $(du -sm .whl | cut -f1) MiB"

if [[ "${1:-}" == "--no-dali" ]]; then exit 0; fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
download "$stage/wheels" "${DALI_WHEELS[@]}"
"$PY" -m pip install --quiet --no-deps --no-index --find-links "$stage/wheels" --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  --target "$stage/site" "${DALI_WHEELS[@]}"
echo "fetch_wheels: packing $(du -sm "$stage/site" | cut -f1) MiB installed (xz takes a few minutes)"
tar -C "$stage/site" -cf - . | xz -"${XZ_LEVEL:-6}" -T0 > "$stage/dali-site.tar.xz"
sum=$(sha256sum "$stage/dali-site.tar.xz" | cut -d' ' -f1)
(cd "$stage" && split -b "${PART_MIB}M" -d -a 2 dali-site.tar.xz dali-site.tar.xz.)
rm -rf .whl-dali && mkdir -p .whl-dali
count=$(ls "$stage"/dali-site.tar.xz.?? | wc -l)
for part in "$stage"/dali-site.tar.xz.??; do
  n=${part##*.}
  mkdir -p ".whl-dali/part$n"
  mv "$part" ".whl-dali/part$n/"
  echo "$count $sum" > ".whl-dali/part$n/PARTS"
done
echo "fetch_wheels: .whl-dali/ $count parts of at most $PART_MIB MiB ($(du -sm "$stage/dali-site.tar.xz" | cut -f1) MiB," \
     "sha256 $sum) from:"
ls -l "$stage/wheels" | awk 'NR > 1 {printf "  %8.1f MiB  %s\n", $5 / 1048576, $9}'
