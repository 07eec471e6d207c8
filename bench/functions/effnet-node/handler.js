'use strict'

// EfficientNet-Lite0 on a raw input tensor (602,112 bytes of float32) with
// onnxruntime-node, installed on the node from package.json at deploy.
const path = require('path')
const ort = require('onnxruntime-node')

const session = ort.InferenceSession.create(path.join(__dirname, 'efficientnet-lite0.onnx'), {
  intraOpNumThreads: 1,
  interOpNumThreads: 1,
  executionProviders: ['cpu']
})

exports.handle = async (req) => {
  const body = req.body
  // A Buffer may sit at any offset of its memory; a Float32Array may not.
  const pixels = new Float32Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.length))
  const input = new ort.Tensor('float32', pixels, [1, 3, 224, 224])
  const { logits } = await (await session).run({ input })
  let best = 0
  for (let i = 1; i < logits.data.length; i++) if (logits.data[i] > logits.data[best]) best = i
  return { class: best }
}
