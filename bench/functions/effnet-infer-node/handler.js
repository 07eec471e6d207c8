'use strict';
// The raw input tensor, run by the model the node serves (effnet-onnx):
// no model in this worker.
const sedge = require('sedge');

exports.handle = async (req) => {
  // A Float32Array needs its bytes at a multiple of four: copied when not.
  const bytes = req.body.byteOffset % 4 === 0 ? req.body : Buffer.from(req.body);
  const x = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  const logits = (await sedge.infer('effnet-onnx', { data: x, shape: [1, 3, 224, 224] })).data;
  let best = 0;
  for (let i = 1; i < logits.length; i++) {
    if (logits[i] > logits[best]) best = i;
  }
  return JSON.stringify({ class: best });
};
