"""The readers' limits (spark_infer/limits.py): header size, JSON values and depth, counts
against the bytes left, each refused with the reader's typed error, for the engine-file header
reader, the Hugging Face safetensors reader and the GGUF reader. Hand-written hostile bytes."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from spark_infer import _core, limits
from spark_infer.convert import ConversionError, load_source
from spark_infer.convert.gguf import GGUFFile
from spark_infer.convert.hf import SafetensorsFile
from spark_infer.fileformat import FormatError, read_engine_file, read_engine_header


def test_limits_equal_the_engines():
    assert limits.MAX_HEADER_BYTES == _core.MAX_HEADER_BYTES == 32 << 20
    assert limits.MAX_JSON_VALUES == _core.MAX_JSON_VALUES
    assert limits.MAX_DEPTH == _core.MAX_JSON_DEPTH


def safetensors_bytes(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


# Hostile safetensors headers, each with the words of its error; the same for both readers.
TOO_MANY = b"[" + b"0," * limits.MAX_JSON_VALUES + b"0]"
HEADERS = {
    "too_many_values": (TOO_MANY, f"more than {limits.MAX_JSON_VALUES} JSON values"),
    "deep": (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 64"),
    "deep_by_one": (b"[" * 66 + b"]" * 66, "nests deeper than 64"),   # the innermost at 65
    "deep_by_one_object": (b'{"a":' * 65 + b"0" + b"}" * 65, "nests deeper than 64"),
    "deep_enough": (b"[" * 65 + b"]" * 65, "not a JSON object"),        # the innermost at 64
    "not_json": (b"{not json", "not JSON"),
    "bad_utf8": (b'{"\xff": 1}', "not JSON"),
}


READERS = {"hf": (SafetensorsFile, ConversionError), "engine": (read_engine_header, FormatError)}


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(HEADERS))
def test_readers_refuse_hostile_headers(tmp_path, case, reader):
    header, words = HEADERS[case]
    read, error = READERS[reader]
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(header))
    with pytest.raises(error, match=words):
        read(path)


def test_header_size_cap(tmp_path):
    """A header over 32 MiB is refused from its size field, before it is read."""
    path = tmp_path / "m"
    n = limits.MAX_HEADER_BYTES + 1
    path.write_bytes(safetensors_bytes(b"{}" + b" " * (n - 2)))
    with pytest.raises(ConversionError, match="over the 32 MiB limit"):
        SafetensorsFile(path)
    with pytest.raises(FormatError, match="over the 32 MiB limit"):
        read_engine_header(path)
    with pytest.raises(FormatError, match="over the 32 MiB limit"):
        read_engine_file(path)


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [1], "data_offsets": "ab"},       # offsets that are not numbers
    {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]},  # a bool is not a size
    {"dtype": "F32", "shape": [-1, -1], "data_offsets": [0, 4]},
    {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]},
    {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]},
])
def test_hf_reader_refuses_malformed_entries(tmp_path, entry):
    path = tmp_path / "m.safetensors"
    path.write_bytes(safetensors_bytes(json.dumps({"t": entry}).encode(), b"\0" * 4))
    with pytest.raises(ConversionError, match="corrupt safetensors entry for tensor 't'"):
        SafetensorsFile(path)


@pytest.mark.parametrize("meta,entry,words", [
    ([1, 2], None, "__metadata__ is not an object of strings"),
    ({"format": 1}, None, "__metadata__ is not an object of strings"),
    (None, {"dtype": ["F32"], "shape": [2]}, "malformed header entry"),
    (None, {"dtype": "F32", "shape": ["2"]}, "malformed header entry"),
])
def test_engine_header_reader_refuses_malformed_entries(tmp_path, meta, entry, words):
    from tiny_model import tiny_config

    good = {"format": "spark-infer", "format_version": "1", "config": tiny_config().to_json()}
    header = {"__metadata__": good if meta is None else meta}
    if entry is not None:
        header["t"] = entry
    path = tmp_path / "m.spark"
    path.write_bytes(safetensors_bytes(json.dumps(header).encode()))
    with pytest.raises(FormatError, match=words):
        read_engine_header(path)


# ------------------------------------------------------------------------------------ GGUF

def gguf_bytes(kv: bytes, n_kv: int = 1, n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kv


def gguf_key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def nested_arrays(depth: int) -> bytes:
    """A value of type ARRAY holding one ARRAY ... `depth` arrays deep, the innermost empty u8."""
    body = struct.pack("<IQ", 0, 0)                      # innermost: u8 x 0
    for _ in range(depth - 1):
        body = struct.pack("<IQ", 9, 1) + body           # ARRAY of 1 ARRAY
    return struct.pack("<I", 9) + body                    # the value's own type: ARRAY


def test_gguf_nesting_limit(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(gguf_key("k") + nested_arrays(limits.MAX_DEPTH)))
    with GGUFFile(path) as f:
        v = f.metadata["k"]
        for _ in range(limits.MAX_DEPTH - 1):
            assert isinstance(v, list) and len(v) == 1
            v = v[0]
        assert v.size == 0
    for depth in (limits.MAX_DEPTH + 1, 5000):    # 5000: past Python's recursion limit
        path.write_bytes(gguf_bytes(gguf_key("k") + nested_arrays(depth)))
        with pytest.raises(ConversionError, match=f"nested deeper than {limits.MAX_DEPTH}"):
            GGUFFile(path)


@pytest.mark.parametrize("etype,least", [(8, 8), (9, 12), (6, 4), (12, 8)])
def test_gguf_counts_checked_against_the_bytes_left(tmp_path, etype, least):
    """An array's count is refused when its items cannot fit in what is left of the file,
    at the least size of one item (a string's length field, an array's type and count)."""
    path = tmp_path / "m.gguf"
    room = 400
    for count, ok in ((room // least, True), (room // least + 1, False)):
        value = struct.pack("<IIQ", 9, etype, count) + b"\0" * room
        path.write_bytes(gguf_bytes(gguf_key("k") + value))
        if ok:
            with GGUFFile(path) as f:
                assert len(f.metadata["k"]) == count
        else:
            with pytest.raises(ConversionError, match=f"{count} items of at least {least} bytes"):
                GGUFFile(path)


def test_gguf_header_counts(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(b"\0" * 100, n_kv=2**40))
    with pytest.raises(ConversionError, match="key/values: 1099511627776 items"):
        GGUFFile(path)
    path.write_bytes(gguf_bytes(b"\0" * 100, n_kv=0, n_tensors=2**40))
    with pytest.raises(ConversionError, match="tensor infos: 1099511627776 items"):
        GGUFFile(Path(path))


# ------------------------------------------------------------------- layer counts (fuzzing)

def test_gguf_layer_count_bounded_by_the_tensors(tmp_path):
    """block_count = 2^32 - 1 used to build per-layer lists of 4 billion entries (tens of GB)
    before any tensor was checked; it must be refused from the tensor count at once."""
    import synth_checkpoints as sc
    from test_convert import _gguf_fields, _gguf_meta

    fields = _gguf_fields("gemma2", 2)
    meta = _gguf_meta(fields, "gemma2")
    meta["block_count"] = 2**32 - 1
    path = tmp_path / "m.gguf"
    sc.write_gguf(path, "gemma2", meta, sc.engine_weights(fields), tokenizer=False)
    with pytest.raises(ConversionError, match="block_count: 4294967295 layers, but the "
                                              "checkpoint has only 24 tensors"):
        with load_source(path):
            pass


def test_hf_layer_count_bounded_by_the_tensors(tmp_path):
    import synth_checkpoints as sc

    c = sc.gemma2_config()
    sc.write_hf_checkpoint(tmp_path, c, sc.random_weights(sc.gemma_shapes(c, "gemma2")))
    for value, words in ((10**12, "num_hidden_layers: 1000000000000 layers, but the checkpoint "
                                  "has only 24 tensors"),
                         ([2], "value of the wrong kind")):
        (tmp_path / "config.json").write_text(json.dumps({**c, "num_hidden_layers": value}))
        with pytest.raises(ConversionError, match=words):
            with load_source(tmp_path):
                pass
