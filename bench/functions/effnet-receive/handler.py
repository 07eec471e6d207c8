import json

import numpy as np


def handle(req):
    # The same raw input tensor as effnet-infer, taken apart the same way,
    # but no model is called: what the body's way into a Python worker and
    # the answer's way back cost alone.
    x = np.frombuffer(req.body, dtype=np.float32).reshape(1, 3, 224, 224)
    return json.dumps({"class": int(x[0, 0, 0, 0] > 5)})
