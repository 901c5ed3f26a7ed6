#!/usr/bin/env python3
"""Fuzz target, structure-aware: edits to valid engine files, then the C++ engine runs them.

Random bytes rarely survive the JSON, and the C++ code gives atheris no coverage, so this target
reads its input as choices (atheris.FuzzedDataProvider): which of the valid random models
(make_corpus.engine_models: every kind and dtype), then 1-4 edits of its header: a config field
set to an odd value (0, negative, huge, a float, another type) or removed, a tensor's dtype,
shape or data_offsets changed, a metadata entry changed. The engine loads the result with a
chosen context, chunk, KV type and thread count, prefills and decodes; it must refuse the file
with FormatError/ValueError or run it, never crash."""

import json
import tempfile
from pathlib import Path

import common

import numpy as np

from make_corpus import engine_models
from spark_infer import _core
from test_engine import _header, _write

MODELS = [(p, *_header(p)[1:])
          for p in engine_models(Path(tempfile.mkdtemp(dir=common.scratch_dir())))]
ODD_INTS = [0, 1, 2, 3, -1, 7, 64, 255, 4096, 2**24, 2**31, 2**53, 2**63, -(2**63)]
WORDS = ["local", "global", "gate", "abs_gelu", "abs_act", "", "F32", "BF16", "I8", "F16",
         "I32", "U8", "F64", "BOOL", "spark-infer", "1", "2"]


def odd_value(fdp):
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind == 0:
        return fdp.PickValueInList(ODD_INTS)
    if kind == 1:
        return fdp.ConsumeIntInRange(-4, 80)
    if kind == 2:
        return fdp.ConsumeRegularFloat()
    if kind == 3:
        return fdp.PickValueInList([0.0, 0.5, 1.0, -0.5, 1e-30, 1e30, 0.999999, 1e308])
    if kind == 4:
        return fdp.ConsumeBool()
    if kind == 5:
        return fdp.PickValueInList(WORDS)
    if kind == 6:
        return [odd_value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    return None


def edit(fdp, header: dict) -> None:
    meta = header["__metadata__"]
    try:                                          # an earlier edit may have replaced it
        cfg = json.loads(meta.get("config", ""))
    except ValueError:
        cfg = None
    op = fdp.ConsumeIntInRange(0, 5)
    if op <= 2 and not (isinstance(cfg, dict) and cfg):
        op = 5
    if op <= 1:                                   # a config field: odd value, or removed
        key = fdp.PickValueInList(sorted(cfg))
        if op == 0:
            cfg[key] = odd_value(fdp)
        else:
            del cfg[key]
    elif op == 2:                                 # layer_types of another length or content
        cfg["layer_types"] = [fdp.PickValueInList(["local", "global"])
                              for _ in range(fdp.ConsumeIntInRange(0, 5))]
    elif op <= 4:                                 # a tensor entry
        names = sorted(k for k in header if k != "__metadata__")
        if not names:
            return
        name = fdp.PickValueInList(names)
        entry = header[name]
        field = fdp.PickValueInList(["dtype", "shape", "data_offsets", "drop"])
        if field == "drop":
            del header[name]
        elif field == "dtype" or fdp.ConsumeBool():
            entry[field] = odd_value(fdp) if field != "dtype" else fdp.PickValueInList(WORDS)
        else:                                     # nudge one number
            nums = entry[field]
            if isinstance(nums, list) and nums and all(type(v) is int for v in nums):
                i = fdp.ConsumeIntInRange(0, len(nums) - 1)
                nums[i] = nums[i] + fdp.PickValueInList([-8, -4, -2, -1, 1, 2, 4, 8, 2**32])
    else:                                         # a metadata entry
        key = fdp.PickValueInList(["format", "format_version", "tokenizer", "config", "x"])
        meta[key] = fdp.PickValueInList(WORDS + ["{}", "[]", "{\"d_model\": 8}", "AAAA"])
        return
    if cfg is not None:
        meta["config"] = json.dumps(cfg)


def one_input(data: bytes) -> None:
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    src, header_bytes, payload = fdp.PickValueInList(MODELS)
    header = json.loads(header_bytes)
    for _ in range(fdp.ConsumeIntInRange(1, 4)):
        edit(fdp, header)
    path = str(Path(common.scratch_dir()) / "edited.spark")
    _write(path, json.dumps(header).encode(), payload)
    context = fdp.ConsumeIntInRange(1, 24)
    engine = _core.Engine(path, context, fdp.ConsumeIntInRange(1, 9),
                          fdp.PickValueInList(["bf16", "f32"]))
    engine.threads = fdp.ConsumeIntInRange(1, 3)
    n = fdp.ConsumeIntInRange(1, context)
    tokens = np.array([fdp.ConsumeIntInRange(0, engine.vocab_size - 1) for _ in range(n)],
                      np.int32)
    logits = engine.prefill(tokens, fdp.ConsumeIntInRange(1, 9))
    for _ in range(min(fdp.ConsumeIntInRange(0, 4), context - n)):
        logits = engine.decode(int(np.argmax(logits)))


if __name__ == "__main__":
    common.fuzz(one_input)
