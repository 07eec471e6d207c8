"""An ordinary Flask app, unchanged but for reading its port from $PORT:
sedge starts it, waits until it answers, and proxies requests to it."""

import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask behind sedge!\n"


@app.post("/normalise")
def normalise():
    data = request.get_json(silent=True) or {}
    values = data.get("values")
    if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
        return jsonify(error="expected {\"values\": [numbers]}"), 400
    total = sum(abs(v) for v in values) or 1.0
    return jsonify(normalised=[v / total for v in values])


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]), threaded=True)
