#!/usr/bin/env python3
"""Fuzz target: engine files (`*.spark`) through every reader of them: the C++ loader behind
spark_infer.load (plus the tokenizer in the metadata and one forward pass), the header reader
of `spark-infer info` and the safetensors-library reader of fileformat.py."""

import common

import spark_infer
from spark_infer.fileformat import read_engine_file, read_engine_header


def one_input(data: bytes) -> None:
    path = common.scratch_file("model.spark", data)
    try:
        read_engine_header(path)
    except common.ALLOWED:
        pass
    try:
        read_engine_file(path, dequantize=True)
    except common.ALLOWED:
        pass
    model = spark_infer.load(path, threads=1, context_length=8, chunk_size=4)
    model.logits([0, model.config.vocab_size - 1])
    if model.tokenizer is not None:
        model.detokenize(model.tokenize("Hello, world"))


if __name__ == "__main__":
    common.fuzz(one_input)
