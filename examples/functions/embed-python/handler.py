import os

import numpy as np
import sedge
from tokenizers import Tokenizer

# The tokenizer file is put here by scripts/fetch-models.sh.
_tokenizer = Tokenizer.from_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm-tokenizer.json"))
_tokenizer.enable_truncation(max_length=128)
_tokenizer.enable_padding()


def embed(texts):
    """One L2-normalised 384-number vector per text: the encoder's token
    vectors averaged over the real (unpadded) tokens."""
    encodings = _tokenizer.encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
    types = np.zeros_like(ids)
    out = sedge.infer("minilm-onnx", {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})
    # A model with one output answers that array alone.
    hidden = out["last_hidden_state"] if isinstance(out, dict) else out
    weights = mask[:, :, None].astype(np.float32)
    pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def handle(req):
    body = req.json() if req.body else {}
    texts = body.get("texts") if isinstance(body, dict) else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts) or len(texts) > 64:
        return sedge.Response({"error": 'expected {"texts": ["a sentence", ...]} (1 to 64 strings)'}, status=400)
    vectors = embed(texts)
    answer = {"dimensions": int(vectors.shape[1]), "embeddings": [[round(float(x), 6) for x in v] for v in vectors]}
    if len(texts) >= 2:
        answer["similarity"] = round(float(vectors[0] @ vectors[1]), 4)
    return answer
