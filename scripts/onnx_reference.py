#!/usr/bin/env python3
"""Runs an ONNX model with ONNX Runtime, the reference frugal's own inference is checked against.

Usage: python3 scripts/onnx_reference.py MODEL INPUT_JSON

INPUT_JSON is a file, or - for standard input, holding the rows of the model's single
input as a JSON list of lists (float32 [N, inputs]). The first output comes back on
standard output as a JSON list of lists; each float32 value is written as the float64 it
converts to exactly, so nothing is lost in the text.
"""

import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model, source = sys.argv[1], sys.argv[2]
    rows = json.load(sys.stdin) if source == "-" else json.load(open(source))
    x = np.asarray(rows, dtype=np.float32)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    (name,) = [i.name for i in session.get_inputs()]
    out = session.run(None, {name: x})[0]
    json.dump(out.astype(np.float64).tolist(), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
