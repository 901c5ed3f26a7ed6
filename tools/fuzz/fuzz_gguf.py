#!/usr/bin/env python3
"""Fuzz target: GGUF files through the converter's reader (convert.load_source): header,
key/values, tensor infos, the config and tokenizer built from them, every tensor dequantized."""

import common

from spark_infer.convert import load_source


def one_input(data: bytes) -> None:
    # The magic decides the reader; keep it so the mutations exercise the GGUF one.
    path = common.scratch_file("model.gguf", b"GGUF" + data[4:])
    with load_source(path) as src:
        for name in src.names:
            src.get(name)


if __name__ == "__main__":
    common.fuzz(one_input)
