"""Writes a picture as EfficientNet-Lite0's input tensor: RGB, the shorter
side resized to 256 (bilinear), the centre 224 x 224 cropped, (x - 127) / 128,
laid out NCHW as raw little-endian float32 (602,112 bytes for one picture).

usage: image_tensor.py IMAGE OUT.f32
"""

import sys

import numpy as np
from PIL import Image


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    picture = Image.open(argv[1]).convert("RGB")
    w, h = picture.size
    scale = 256 / min(w, h)
    picture = picture.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
    w, h = picture.size
    left, top = (w - 224) // 2, (h - 224) // 2
    picture = picture.crop((left, top, left + 224, top + 224))
    x = (np.asarray(picture, dtype=np.float32) - 127.0) / 128.0
    x.transpose(2, 0, 1)[None].astype("<f4").tofile(argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
