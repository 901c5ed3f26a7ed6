#!/usr/bin/env python3
"""Fuzz target: engine files (`*.spark`) through the one reader of them (cpp/model/
engine_file.h) by every way in: the loader behind spark_infer.load (plus the tokenizer in the
metadata and one forward pass), and fileformat.py's read_engine_header (`spark-infer info`) and
read_engine_file over `_core.EngineFile`."""

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
