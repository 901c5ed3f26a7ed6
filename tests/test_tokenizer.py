"""Tokenizer: SentencePiece model from GGUF metadata, special ids, streaming detokenization."""

from __future__ import annotations

import time

import numpy as np
import pytest

import gemma3_real as real
import synth_checkpoints as sc
from spark_infer.convert.gguf_tokenizer import proto_from_gguf_metadata, tokenizer_from_gguf
from spark_infer.tokenizer import SPACE, StreamDecoder, Tokenizer, TokenizerError


def _tiny_meta(**over) -> dict:
    tokens, scores, types = sc.tiny_vocab()
    m = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
         "tokenizer.ggml.scores": np.array(scores, np.float32),
         "tokenizer.ggml.token_type": np.array(types, np.int32),
         "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
         "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
         "tokenizer.ggml.add_space_prefix": False}
    m.update(over)
    return m


@pytest.fixture(scope="module")
def tiny() -> Tokenizer:
    return Tokenizer(proto_from_gguf_metadata(_tiny_meta()))


def _stream(tok: Tokenizer, ids) -> tuple[str, list[str]]:
    d = tok.stream()
    parts = [d.push(i) for i in ids]
    parts.append(d.flush())
    return "".join(parts), parts


# ----------------------------------------------------------------------- synthetic vocabulary

def test_proto_settings(tiny):
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    m.ParseFromString(tiny.proto)
    assert m.trainer_spec.model_type == pb.TrainerSpec.BPE
    assert m.trainer_spec.byte_fallback and m.trainer_spec.split_digits
    ns = m.normalizer_spec
    assert (ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces,
            ns.escape_whitespaces) == ("identity", False, False, True)
    assert m.pieces[3].type == pb.ModelProto.SentencePiece.UNKNOWN
    pieces = [p.piece for p in m.pieces]
    assert SPACE * 2 in pieces and "  " not in pieces       # USER_DEFINED spaces re-escaped
    assert (m.trainer_spec.bos_piece, m.trainer_spec.eos_piece) == ("<bos>", "<eos>")


def test_tiny_special_ids_and_roundtrip(tiny):
    assert (tiny.bos_id, tiny.eos_id, tiny.pad_id, tiny.unk_id) == (2, 1, 0, 3)
    assert (tiny.start_of_turn_id, tiny.end_of_turn_id) == (105, 106)
    ids = tiny.encode("hello  the world\n\n", add_bos=True)
    assert ids[0] == 2
    assert tiny.id_to_piece(ids[1]) == "he"
    assert tiny.decode(ids) == "hello  the world\n\n"
    assert tiny.piece_to_id(SPACE * 2) in tiny.encode("a  b")
    assert tiny.piece_to_id("not-a-piece") is None


def test_tiny_byte_fallback_stream(tiny):
    ids = tiny.encode("é€!")   # no such pieces: bytes <0xC3><0xA9> <0xE2><0x82><0xAC>
    pieces = [tiny.id_to_piece(i) for i in ids]
    assert pieces[:5] == ["<0xC3>", "<0xA9>", "<0xE2>", "<0x82>", "<0xAC>"]
    d = tiny.stream()
    assert d.push(ids[0]) == "" and d.pending
    assert d.push(ids[1]) == "é" and not d.pending
    assert d.push(ids[2]) == "" and d.push(ids[3]) == ""
    assert d.push(ids[4]) == "€"
    assert d.push_many(ids[5:]) + d.flush() == "!"
    # an incomplete character at the end becomes U+FFFD, like SentencePiece's decode
    d = tiny.stream()
    assert d.push(ids[0]) == ""
    assert d.flush() == "\ufffd"
    assert tiny.decode(ids[:1]) == "\ufffd"


def test_tiny_control_tokens_decode_to_nothing(tiny):
    ids = [2, 105] + tiny.encode("hello") + [106, 1]
    text, parts = _stream(tiny, ids)
    assert text == tiny.decode(ids) == "hello"
    assert list(tiny.iter_text(ids)) == [p for p in parts if p]


def test_tiny_parse_special(tiny):
    s = "<start_of_turn>hello<end_of_turn><b>x"
    assert tiny.encode(s, parse_special=True)[:1] == [105]
    assert 106 in tiny.encode(s, parse_special=True)
    assert 105 not in tiny.encode(s)


def test_errors(tiny):
    with pytest.raises(TokenizerError, match="unsupported GGUF tokenizer model 'gpt2'"):
        proto_from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.model": "gpt2"}))
    with pytest.raises(TokenizerError, match="scores has 3 entries"):
        proto_from_gguf_metadata(_tiny_meta(**{"tokenizer.ggml.scores": np.zeros(3)}))
    with pytest.raises(ValueError, match="out of range"):
        tiny.decode([400])
    with pytest.raises(TokenizerError):
        Tokenizer(b"not a proto")


def test_load_from_each_source(tmp_path, tiny):
    # GGUF (metadata only), tokenizer.model, HF directory
    g = tmp_path / "t.gguf"
    import gguf

    w = gguf.GGUFWriter(str(g), "gemma3")
    tokens, scores, types = sc.tiny_vocab()
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(2)
    w.add_eos_token_id(1)
    w.add_unk_token_id(3)
    w.add_pad_token_id(0)
    w.add_add_space_prefix(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert tokenizer_from_gguf(g).proto == tiny.proto
    with pytest.raises(TokenizerError, match="a GGUF file; read its tokenizer with"):
        Tokenizer.load(g)       # the runtime tokenizer does not read GGUF (convert/ does)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.model").write_bytes(tiny.proto)
    assert Tokenizer.load(tmp_path / "hf").proto == tiny.proto
    assert Tokenizer.load(tmp_path / "hf" / "tokenizer.model").proto == tiny.proto
    with pytest.raises(TokenizerError, match="no tokenizer.model"):
        Tokenizer.from_hf_dir(tmp_path)


# ----------------------------------------------------------------------- real Gemma 3 vocabulary

@pytest.fixture(scope="module")
def gemma3() -> Tokenizer:
    from spark_infer.convert.gguf import GGUFFile

    path = real.gguf_file()
    t0 = time.perf_counter()
    with GGUFFile(path) as f:
        n = len(f.metadata["tokenizer.ggml.tokens"])
    t1 = time.perf_counter()
    tok = tokenizer_from_gguf(path)
    t2 = time.perf_counter()
    print(f"\nGGUF metadata read ({n} tokens): {t1 - t0:.3f} s; "
          f"tokenizer built from GGUF: {t2 - t1:.3f} s")
    return tok


@real.needs_gemma3
def test_gemma3_special_ids(gemma3):
    assert gemma3.vocab_size == 262144
    assert (gemma3.bos_id, gemma3.eos_id, gemma3.pad_id, gemma3.unk_id) == (2, 1, 0, 3)
    assert (gemma3.start_of_turn_id, gemma3.end_of_turn_id) == (105, 106)
    for i, piece in [(0, "<pad>"), (1, "<eos>"), (2, "<bos>"), (3, "<unk>"),
                     (105, "<start_of_turn>"), (106, "<end_of_turn>")]:
        assert gemma3.id_to_piece(i) == piece
        assert gemma3.piece_to_id(piece) == i
        assert gemma3.decode([i]) == ("" if i != 3 else " \u2047 ")   # SentencePiece's unk
    # control tokens written as text are text by default
    assert 105 not in gemma3.encode("<start_of_turn>")
    assert gemma3.encode("<start_of_turn>", parse_special=True) == [105]


@real.needs_gemma3
def test_gemma3_known_ids(gemma3):
    assert gemma3.encode("Hello world! The capital of France is", add_bos=True) == \
        [2, 9259, 1902, 236888, 669, 5279, 529, 7001, 563]
    assert gemma3.encode("Hello  world") == [9259, 138, 12392]


@real.needs_gemma3
def test_gemma3_matches_hf_tokenizer(gemma3):
    """Ids recorded from Hugging Face's tokenizer (AutoTokenizer from the same GGUF).  HF parses
    control tokens written in text; so does encode(parse_special=True)."""
    cases = real.reference_data()["tokenizer"]
    assert len(cases) >= 20
    bad = []
    for c in cases:
        if gemma3.encode(c["text"], parse_special=True) != c["ids"]:
            bad.append(c["text"])
        has_special = any(s in c["text"] for s in ("<start_of_turn>", "<bos>", "<eos>"))
        if not has_special and gemma3.encode(c["text"]) != c["ids"]:
            bad.append(c["text"])
    assert not bad, f"token ids differ from Hugging Face for {bad!r}"


@real.needs_gemma3
def test_gemma3_decode_and_stream(gemma3):
    for c in real.reference_data()["tokenizer"]:
        ids = c["ids"]
        text = c["text"]
        if "<" in text and any(i in (0, 1, 2, 3, 105, 106) for i in ids):
            continue  # control tokens decode to nothing
        assert gemma3.decode(ids) == text
        streamed, parts = _stream(gemma3, ids)
        assert streamed == text
        for p in parts:   # every emitted piece is complete text (no lone surrogates / U+FFFD)
            assert "\ufffd" not in p
            p.encode("utf-8")


@real.needs_gemma3
def test_gemma3_stream_holds_back_partial_utf8(gemma3):
    text = "𠀀𠀁 ok"   # rare CJK extension B: byte-fallback tokens
    ids = gemma3.encode(text)
    assert any(gemma3.id_to_piece(i).startswith("<0x") for i in ids)
    d: StreamDecoder = gemma3.stream()
    out = []
    for i in ids:
        s = d.push(i)
        if gemma3.id_to_piece(i).startswith("<0x") and d.pending:
            assert s == ""
        out.append(s)
    assert "".join(out) + d.flush() == text


@real.needs_gemma3
def test_gemma3_chat_prompt_from_ids(gemma3):
    enc = gemma3.encode
    ids = [2, 105] + enc("user\nHi") + [106] + enc("\n") + [105] + enc("model\n")
    ref = [c for c in real.reference_data()["prompts"] if c["prompt"] == "chat"][0]["ids"]
    assert ids[:2] == ref[:2] == [2, 105]
    assert gemma3.decode(ids) == "user\nHi\nmodel\n"
    assert gemma3.encode("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
                         add_bos=True, parse_special=True) == ids


@real.needs_gemma3
def test_gemma3_tokenizer_in_engine_file(gemma3):
    assert Tokenizer.from_engine_file(real.engine_file("f32")).proto == gemma3.proto
