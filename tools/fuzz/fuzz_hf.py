#!/usr/bin/env python3
"""Fuzz target: a Hugging Face checkpoint's safetensors file through the converter's reader
(convert.load_source on a directory): header, entries, shape checks, every tensor read. The
directory's config.json is the seed corpus's (make_corpus.hf_config()), so the shapes match."""

import json
import os

import common

from spark_infer.convert import load_source

from make_corpus import hf_config

DIRECTORY = os.path.join(common.scratch_dir(), "hf")
os.makedirs(DIRECTORY)
with open(os.path.join(DIRECTORY, "config.json"), "w") as f:
    json.dump(hf_config(), f)


def one_input(data: bytes) -> None:
    with open(os.path.join(DIRECTORY, "model.safetensors"), "wb") as f:
        f.write(data)
    with load_source(DIRECTORY) as src:
        for name in src.names:
            src.get(name)


if __name__ == "__main__":
    common.fuzz(one_input)
