#!/usr/bin/env bash
# Put Fashion-MNIST (the four IDX files) where mae.data.sources finds it, and say where it is.
#
# Order: an existing copy ($MAE_FASHION_MNIST_DIR, Debian's /usr/share/datasets/fashion-mnist, or
# the project cache) wins and nothing is fetched. Otherwise Debian's `dataset-fashion-mnist` is
# downloaded with `apt-get download` (no root needed; `apt-get update` is tried once, as root, only
# if the download fails) and unpacked with `dpkg-deb -x` into <project>/.cache/datasets/. Without
# apt, torchvision's FashionMNIST downloader fills <project>/.cache/datasets/FashionMNIST/raw.
# Idempotent: a second run prints one line.
set -euo pipefail

ROOT="${MAE_PROJECT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
CACHE="$ROOT/.cache/datasets"
SYSTEM_DIR=/usr/share/datasets/fashion-mnist
DEST="$CACHE/fashion-mnist"
TORCHVISION_DIR="$CACHE/FashionMNIST/raw"
FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)

# A folder holds the data set when each file is there, gzipped or not.
complete() {
    local dir=$1 name
    for name in "${FILES[@]}"; do
        [[ -s "$dir/$name.gz" || -s "$dir/$name" ]] || return 1
    done
}

found() {
    echo "Fashion-MNIST: $1"
    exit 0
}

for dir in ${MAE_FASHION_MNIST_DIR:+"$MAE_FASHION_MNIST_DIR"} "$SYSTEM_DIR" "$DEST" "$TORCHVISION_DIR"; do
    if complete "$dir"; then found "$dir"; fi
done

mkdir -p "$CACHE"
WORK=$(mktemp -d "$CACHE/.fetch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
    echo "Fashion-MNIST: downloading Debian's dataset-fashion-mnist (about 31 MB)..." >&2
    # As root, apt drops privileges to _apt, which cannot write here; the sandbox is moot for
    # a download into our own folder.
    sandbox=()
    if [[ $(id -u) -eq 0 ]]; then sandbox=(-o APT::Sandbox::User=root); fi
    download() { (cd "$WORK" && apt-get download -qq "${sandbox[@]}" dataset-fashion-mnist) >"$WORK/apt.log" 2>&1; }
    if ! download; then
        if [[ $(id -u) -eq 0 ]] && apt-get update -qq >>"$WORK/apt.log" 2>&1 && download; then
            :
        else
            cat "$WORK/apt.log" >&2
            echo "Fashion-MNIST: apt-get download failed (as root, 'apt-get update' may help)" >&2
            exit 1
        fi
    fi
    dpkg-deb -x "$WORK"/dataset-fashion-mnist_*.deb "$WORK/pkg"
    rm -rf "$DEST"
    mv "$WORK/pkg/usr/share/datasets/fashion-mnist" "$DEST"
    complete "$DEST" || { echo "Fashion-MNIST: the package lacks the IDX files" >&2; exit 1; }
    found "$DEST"
fi

PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY=python3
echo "Fashion-MNIST: no apt; downloading with torchvision..." >&2
"$PY" -c 'import sys; from torchvision.datasets import FashionMNIST
FashionMNIST(root=sys.argv[1], train=True, download=True)' "$CACHE"
complete "$TORCHVISION_DIR" || { echo "Fashion-MNIST: torchvision download failed" >&2; exit 1; }
found "$TORCHVISION_DIR"
