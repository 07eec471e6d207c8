#!/usr/bin/env python3
"""A "camera": publishes PNG (or JPEG) frames over MQTT and prints what the
node's EfficientNet function says each one shows.

Each frame goes to cameras/CAMERA/frames at QoS 1; the function's trigger
(examples/functions/effnet-onnx/sedge.toml) queues it as a call and
publishes the answer, the top classes as JSON, to cameras/CAMERA/frames/labels.
One frame is in flight at a time, so each answer belongs to the frame
before it.

    python examples/camera/camera.py --broker mqtt://127.0.0.1:1883 \\
        --count 3 models/samples/chelsea.png

Needs paho-mqtt (pip install 'paho-mqtt>=2,<3'). Exits 1 when a frame gets
no answer within --timeout.
"""

import argparse
import itertools
import json
import queue
import sys
import time
from urllib.parse import urlparse

import paho.mqtt.client as mqtt


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("frames", nargs="+", help="PNG or JPEG files, sent in turn")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port")
    p.add_argument("--camera", default="front", help="the camera's name, one topic level")
    p.add_argument("--count", type=int, default=0, help="frames to send (0: forever)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for an answer")
    args = p.parse_args(argv)
    if "/" in args.camera or "+" in args.camera or "#" in args.camera:
        p.error("--camera must be one topic level, without '/', '+' or '#'")
    url = urlparse(args.broker)
    if url.scheme not in ("mqtt", "tcp") or not url.hostname:
        p.error(f"--broker: expected mqtt://host:port, found {args.broker!r}")
    args.host, args.port = url.hostname, url.port or 1883
    return args


def connect(args, answers):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"camera-{args.camera}")
    labels = f"cameras/{args.camera}/frames/labels"
    connected = queue.Queue()

    def on_connect(client, _userdata, _flags, reason, _properties):
        if reason.is_failure:
            connected.put(f"the broker refused the connection: {reason}")
            return
        # Subscribed on every (re)connection, before any frame is sent.
        client.subscribe(labels, qos=1)

    def on_subscribe(_client, _userdata, _mid, _reasons, _properties):
        connected.put(None)

    def on_message(_client, _userdata, message):
        answers.put(message.payload)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    try:
        client.connect(args.host, args.port, keepalive=30)
    except OSError as e:
        sys.exit(f"camera: cannot reach the broker at {args.broker}: {e}")
    client.loop_start()
    try:
        problem = connected.get(timeout=args.timeout)
    except queue.Empty:
        problem = f"no subscription to {labels} within {args.timeout:g}s"
    if problem:
        sys.exit(f"camera: {problem}")
    return client


def top(answer):
    """The best class of an answer, as `label (score)`, or the answer as it came."""
    try:
        best = json.loads(answer)[0]
        return f"{best['label']} ({best['score']:.2f}), class {best['index']}"
    except (ValueError, KeyError, IndexError, TypeError):
        return answer.decode("utf-8", "replace")


def main(argv=None):
    args = parse_args(argv)
    frames = []
    for path in args.frames:
        try:
            with open(path, "rb") as f:
                frames.append((path, f.read()))
        except OSError as e:
            sys.exit(f"camera: cannot read {path}: {e}")
    answers = queue.Queue()
    client = connect(args, answers)
    topic = f"cameras/{args.camera}/frames"
    sent = range(args.count) if args.count > 0 else itertools.count()
    for n, (path, data) in zip(sent, itertools.cycle(frames)):
        start = time.monotonic()
        client.publish(topic, data, qos=1).wait_for_publish(timeout=args.timeout)
        try:
            answer = answers.get(timeout=args.timeout)
        except queue.Empty:
            client.loop_stop()
            sys.exit(f"camera: frame {n + 1} ({path}) got no answer within {args.timeout:g}s")
        ms = (time.monotonic() - start) * 1000
        print(f"frame {n + 1} {path}: {top(answer)} in {ms:.0f} ms", flush=True)
        if args.count == 0 or n + 1 < args.count:
            time.sleep(args.interval)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()
