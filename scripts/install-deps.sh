#!/usr/bin/env bash
# scripts/install-deps.sh: the one list of Debian 12 packages vlmtrain needs to
# build, run and test. Run as root on a fresh machine; safe to run again.
set -euo pipefail
PACKAGES=(
  build-essential cmake pkg-config git        # toolchain
  libopenmpi-dev openmpi-bin                  # Open MPI
  libhdf5-openmpi-dev hdf5-tools              # parallel HDF5 (+ h5dump)
  libopenblas-openmp-dev                      # BLAS, OpenMP build (no nested oversubscription)
  libcjson-dev                                # JSON
  libpcre2-dev                                # regex (tokenizer pre-tokenisation)
  libpng-dev libjpeg62-turbo-dev              # image decoding (mkdata --json)
  python3-venv                                # venv for the tokenizer test's tiktoken (PyPI)
  python3-torch python3-numpy python3-h5py    # reference numerics for tests and benchmarks
  python3-pil python3-regex                   # mkdata --json tests: PIL resize, Qwen regex
  slurm-wlm munge                             # Slurm (slurmctld, slurmd, srun with pmix_v4) for the one-node cluster test
  gnuplot-nox                                 # vlmtrain scaling: the PNG plot
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
