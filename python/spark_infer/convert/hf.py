"""Hugging Face checkpoints (``config.json`` + ``*.safetensors``) -> engine config and tensors.

Supported: ``Gemma2ForCausalLM`` (``model_type`` ``gemma2``), ``Gemma3ForCausalLM``
(``gemma3_text``) and the text part of ``Gemma3ForConditionalGeneration`` (``gemma3``, with a
``text_config`` and ``language_model`` tensor prefixes).  HF stores RMSNorm weights as ``w``
(the model computes ``1 + w``) and Linear weights as ``[out, in]``, which is what the engine
file wants, so tensors are copied (cast to float32) unchanged.

The safetensors files are read through a small ``mmap`` parser (numpy has no bfloat16, so the
``safetensors`` numpy API cannot load bf16 checkpoints); one tensor is materialised at a time.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import limits
from ._errors import ConversionError

_ST_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "F64": np.dtype("<f8"),
}
_ST_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2,
             "I32": 4, "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _is_size(v: object) -> bool:
    """A JSON non-negative integer (bool is an int subclass in Python, but not one here)."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


class SafetensorsFile:
    """Minimal read-only safetensors reader over ``mmap`` (F32/F16/BF16/F64 -> float32)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise ConversionError(f"{self.path}: cannot open: {e}") from e
        try:
            self._parse()
        except BaseException:
            self.close()
            raise

    def _parse(self) -> None:
        size = os.fstat(self._fh.fileno()).st_size
        if size < 8:
            raise ConversionError(f"{self.path}: truncated safetensors file ({size} bytes)")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
        (n,) = struct.unpack_from("<Q", self._mm, 0)
        limits.check_header_size(n, self.path, ConversionError)
        if n > size - 8:
            raise ConversionError(f"{self.path}: truncated or corrupt safetensors file "
                                  f"(header of {n} bytes, file of {size} bytes)")
        header = limits.parse_json_header(self._mm[8:8 + n], self.path, ConversionError)
        if not isinstance(header, dict):
            raise ConversionError(f"{self.path}: corrupt safetensors header: not a JSON object")
        header.pop("__metadata__", None)
        base = 8 + n
        self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, info in header.items():
            try:
                dtype, shape, (a, b) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{self.path}: corrupt safetensors entry for tensor "
                                      f"{name!r}") from None
            if not isinstance(dtype, str) or not all(_is_size(v) for v in (*shape, a, b)):
                raise ConversionError(f"{self.path}: corrupt safetensors entry for tensor "
                                      f"{name!r}: dtype must be a string, shape and "
                                      "data_offsets non-negative integers")
            nel = 1
            for d in shape:
                nel *= d
            if dtype in _ST_SIZES and b - a != nel * _ST_SIZES[dtype]:
                raise ConversionError(f"{self.path}: corrupt safetensors entry for tensor "
                                      f"{name!r}: {b - a} bytes for {dtype} shape {list(shape)}")
            if not a <= b or base + b > size:
                raise ConversionError(f"{self.path}: truncated safetensors file: tensor {name!r} "
                                      f"needs bytes up to {base + b}, the file has {size}")
            self.tensors[name] = (dtype, shape, base + a, b - a)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name][1]

    def get(self, name: str) -> np.ndarray:
        """float32 copy of a tensor."""
        dtype, shape, off, nbytes = self.tensors[name]
        if dtype not in _ST_DTYPES:
            raise ConversionError(f"{self.path}: tensor {name!r} has unsupported dtype {dtype}")
        dt = _ST_DTYPES[dtype]
        raw = np.frombuffer(self._mm, dtype=dt, count=nbytes // dt.itemsize, offset=off)
        if dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            out = raw.astype(np.float32)  # always a copy
        del raw
        return out.reshape(shape)

    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:
                pass
            self._mm = None
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None


# ---------------------------------------------------------------------------------------------

_ARCH_OF = {
    "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
    "Gemma3ForConditionalGeneration": "gemma3",
}
_MODEL_TYPES = {"gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}

# HF layer tensor suffix -> engine suffix
_LAYER_MAP = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "attn_post_norm",
    "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "ffn_post_norm",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TEXT_PREFIXES = ("model.language_model.", "language_model.model.", "model.")
_LM_HEADS = ("lm_head.weight", "language_model.lm_head.weight")
_LAYER_RE = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")


def engine_name(hf_name: str) -> str | None:
    """Engine name of an HF tensor (None for tensors the engine does not use)."""
    for p in _TEXT_PREFIXES:
        if hf_name.startswith(p):
            rest = hf_name[len(p):]
            break
    else:
        return None
    if rest == "embed_tokens.weight":
        return "token_embd"
    if rest == "norm.weight":
        return "output_norm"
    m = _LAYER_RE.match(rest)
    if m and m.group(2) in _LAYER_MAP:
        return f"blk.{m.group(1)}.{_LAYER_MAP[m.group(2)]}"
    return None


def _text_config(cfg: dict, path: str) -> tuple[str, dict]:
    archs = cfg.get("architectures") or []
    model_type = cfg.get("model_type")
    arch = None
    for a in archs:
        if a in _ARCH_OF:
            arch = _ARCH_OF[a]
            break
    if arch is None and model_type in _MODEL_TYPES:
        arch = _MODEL_TYPES[model_type]
    if arch is None:
        raise ConversionError(
            f"{path}: unsupported architecture {archs or model_type!r} (supported: "
            f"Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration)")
    if "text_config" in cfg and isinstance(cfg["text_config"], dict):
        text = dict(cfg["text_config"])
        for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if k not in text and k in cfg:
                text[k] = cfg[k]
        return arch, text
    return arch, cfg


def _rope(arch: str, c: dict, path: str) -> tuple[float, float, float]:
    """(global base, local base, global linear scale) from old- or new-style rope keys."""
    def scale_of(rs: dict | None, where: str) -> float:
        if not rs:
            return 1.0
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind in (None, "default"):
            return 1.0
        if kind != "linear":
            raise ConversionError(f"{path}: unsupported {where} rope type {kind!r}")
        return float(rs.get("factor", 1.0))

    default_g = 10000.0 if arch == "gemma2" else 1e6
    base_g = float(c.get("rope_theta", default_g))
    base_l = float(c.get("rope_local_base_freq", 10000.0 if arch == "gemma3" else base_g))
    scale = scale_of(c.get("rope_scaling"), "rope_scaling")
    rp = c.get("rope_parameters")
    if isinstance(rp, dict):
        if "full_attention" in rp or "sliding_attention" in rp:
            full = rp.get("full_attention") or {}
            slide = rp.get("sliding_attention") or {}
            base_g = float(full.get("rope_theta", base_g))
            base_l = float(slide.get("rope_theta", base_l))
            scale = scale_of(full, "full_attention")
            if scale_of(slide, "sliding_attention") != 1.0:
                raise ConversionError(f"{path}: rope scaling of sliding-window layers is not "
                                      "supported")
        else:
            base_g = float(rp.get("rope_theta", base_g))
            if arch == "gemma2":
                base_l = base_g
            scale = scale_of(rp, "rope_parameters")
    return base_g, base_l, scale


def hf_config_fields(cfg: dict, path: str = "<hf>", tokenizer=None,
                     n_tensors: int | None = None) -> dict:
    """Engine config fields (for ``ModelConfig(**fields)``) from an HF ``config.json`` dict;
    ``n_tensors``, the checkpoint's tensor count, bounds the layer count."""
    arch, c = _text_config(cfg, path)

    def req(k):
        if k not in c or c[k] is None:
            raise ConversionError(f"{path}: config.json lacks the field {k!r}")
        return c[k]

    d_model, n_layers = int(req("hidden_size")), int(req("num_hidden_layers"))
    if n_tensors is not None:
        limits.check_layers(n_layers, n_tensors, f"{path}: num_hidden_layers", ConversionError)
    d_ff, n_heads = int(req("intermediate_size")), int(req("num_attention_heads"))
    vocab = int(req("vocab_size"))
    n_kv = int(c.get("num_key_value_heads") or n_heads)
    head_dim = int(c.get("head_dim") or 256)
    act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ConversionError(f"{path}: unsupported activation {act!r} (need gelu_pytorch_tanh)")
    if c.get("attention_bias"):
        raise ConversionError(f"{path}: attention_bias=true is not supported")
    if c.get("use_bidirectional_attention"):
        raise ConversionError(f"{path}: use_bidirectional_attention=true is not supported")
    qpas = float(c.get("query_pre_attn_scalar") or 256)
    default_acap, default_fcap = (50.0, 30.0) if arch == "gemma2" else (None, None)
    acap = c.get("attn_logit_softcapping", default_acap) or 0.0
    fcap = c.get("final_logit_softcapping", default_fcap) or 0.0
    window = int(c.get("sliding_window") or 4096)
    base_g, base_l, scale = _rope(arch, c, path)

    lt = c.get("layer_types")
    if lt:
        if len(lt) != n_layers:
            raise ConversionError(f"{path}: layer_types has {len(lt)} entries, "
                                  f"num_hidden_layers is {n_layers}")
        kinds = {"sliding_attention": "local", "full_attention": "global"}
        bad = [x for x in lt if x not in kinds]
        if bad:
            raise ConversionError(f"{path}: unsupported layer type {bad[0]!r}")
        layer_types = [kinds[x] for x in lt]
    else:
        pattern = int(c.get("sliding_window_pattern") or (2 if arch == "gemma2" else 6))
        layer_types = ["local" if (i + 1) % pattern else "global" for i in range(n_layers)]

    def first(v, default):
        if isinstance(v, (list, tuple)):
            v = v[0] if v else None
        return default if v is None else int(v)

    tk = tokenizer
    bos = first(c.get("bos_token_id"), tk.bos_id if tk else 2)
    eos = first(c.get("eos_token_id"), tk.eos_id if tk else 1)
    pad = first(c.get("pad_token_id"), tk.pad_id if tk and tk.pad_id >= 0 else 0)
    sot = tk.start_of_turn_id if tk and tk.start_of_turn_id is not None else None
    eot = tk.end_of_turn_id if tk and tk.end_of_turn_id is not None else None
    if sot is None or eot is None:
        sot, eot = (106, 107) if vocab == 256000 else (105, 106)
    return dict(
        arch=arch, vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv, head_dim=head_dim, d_ff=d_ff, norm_eps=float(c.get("rms_norm_eps",
                                                                           1e-6)),
        query_scale=qpas ** -0.5, attn_softcap=float(acap), final_softcap=float(fcap),
        qk_norm=arch == "gemma3", layer_types=layer_types, sliding_window=window,
        rope_base_global=base_g, rope_base_local=base_l, rope_scale_global=scale,
        ffn_predictor_dim=0, attn_predictor_dim=0,
        bos_id=bos, eos_id=eos, pad_id=pad, start_of_turn_id=sot, end_of_turn_id=eot,
    )


def expected_shapes(fields: dict) -> dict[str, tuple[int, ...]]:
    """Engine tensor name -> shape for a dense Gemma config (engine-file.md order)."""
    d, hd, ff = fields["d_model"], fields["head_dim"], fields["d_ff"]
    q, kv = fields["n_heads"] * hd, fields["n_kv_heads"] * hd
    shapes = {"token_embd": (fields["vocab_size"], d), "output_norm": (d,)}
    for i in range(fields["n_layers"]):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm": (d,), p + "attn_post_norm": (d,),
                       p + "ffn_norm": (d,), p + "ffn_post_norm": (d,)})
        if fields["qk_norm"]:
            shapes.update({p + "attn_q_norm": (hd,), p + "attn_k_norm": (hd,)})
        shapes.update({p + "attn_q": (q, d), p + "attn_k": (kv, d), p + "attn_v": (kv, d),
                       p + "attn_output": (d, q), p + "ffn_gate": (ff, d), p + "ffn_up": (ff, d),
                       p + "ffn_down": (d, ff)})
    return shapes


class HFCheckpoint:
    """An open HF checkpoint directory: ``fields`` (config), ``names`` (engine name -> (file,
    HF name)), ``get(engine_name)`` (float32), ``tokenizer_proto`` (bytes or None)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._files: dict[str, SafetensorsFile] = {}
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        p = self.path
        if not p.is_dir():
            raise ConversionError(f"{p}: not a directory")
        cfg_path = p / "config.json"
        if not cfg_path.is_file():
            raise ConversionError(f"{p}: no config.json")
        cfg = _read_json(cfg_path)
        if not isinstance(cfg, dict):
            raise ConversionError(f"{cfg_path}: not a JSON object")
        self.hf_config = cfg

        self.tokenizer_proto = None
        tok = None
        if (p / "tokenizer.model").is_file():
            from ..tokenizer import Tokenizer, TokenizerError

            self.tokenizer_proto = (p / "tokenizer.model").read_bytes()
            try:
                tok = Tokenizer(self.tokenizer_proto)
            except TokenizerError as e:
                raise ConversionError(f"{p / 'tokenizer.model'}: {e}") from None

        index = p / "model.safetensors.index.json"
        if index.is_file():
            try:
                wm = _read_json(index)["weight_map"]
                shard_names = sorted(set(wm.values()))
            except (KeyError, TypeError, AttributeError) as e:
                raise ConversionError(f"{index}: cannot parse: {e!r}") from None
            if not all(isinstance(sn, str) for sn in shard_names):
                raise ConversionError(f"{index}: weight_map values must be file names")
        else:
            shard_names = sorted(f.name for f in p.glob("*.safetensors"))
            if not shard_names:
                raise ConversionError(f"{p}: no *.safetensors files")
        where: dict[str, tuple[str, str]] = {}
        lm_head = None
        for sn in shard_names:
            fp = p / sn
            if not fp.is_file():
                raise ConversionError(f"{p}: missing shard {sn}")
            f = SafetensorsFile(fp)
            self._files[sn] = f
            for hn in f.tensors:
                en = engine_name(hn)
                if en is not None:
                    if en in where:
                        raise ConversionError(f"{fp}: tensor {hn!r} duplicates "
                                              f"{where[en][1]!r}")
                    where[en] = (sn, hn)
                elif hn in _LM_HEADS:
                    lm_head = (sn, hn)

        try:   # after the shards: their tensor count bounds the layer count
            self.fields = hf_config_fields(cfg, str(cfg_path), tok, n_tensors=len(where))
        except (TypeError, OverflowError) as e:   # e.g. a list or Infinity where a number goes
            raise ConversionError(f"{cfg_path}: a field has a value of the wrong kind: {e}") \
                from None
        shapes = expected_shapes(self.fields)
        for en, shape in shapes.items():
            if en not in where:
                raise ConversionError(f"{p}: missing tensor for {en!r} "
                                      f"(e.g. {_hf_example(en)!r})")
            sn, hn = where[en]
            got = self._files[sn].shape(hn)
            if got != shape:
                raise ConversionError(f"{p / sn}: tensor {hn!r} has shape {list(got)}, "
                                      f"expected {list(shape)}")
        self.names = {en: where[en] for en in shapes}
        self.shapes = shapes
        self._lm_head = lm_head
        text_cfg = _text_config(cfg, str(cfg_path))[1]
        self.tied = bool(text_cfg.get("tie_word_embeddings",
                                      cfg.get("tie_word_embeddings", True)))

    def check_lm_head(self, embd: np.ndarray) -> None:
        """An untied lm_head that differs from the embeddings cannot be represented."""
        if self._lm_head is None:
            if not self.tied:
                raise ConversionError(f"{self.path}: tie_word_embeddings is false but there is "
                                      "no lm_head.weight")
            return
        sn, hn = self._lm_head
        f = self._files[sn]
        if f.shape(hn) != embd.shape or not np.array_equal(f.get(hn), embd):
            raise ConversionError(f"{self.path / sn}: tensor {hn!r} is an untied LM head; the "
                                  "engine only supports tied embeddings")

    def get(self, en: str) -> np.ndarray:
        sn, hn = self.names[en]
        a = self._files[sn].get(hn)
        if not np.all(np.isfinite(a)):
            raise ConversionError(f"{self.path / sn}: tensor {hn!r} has non-finite values")
        if en == "token_embd":
            self.check_lm_head(a)
        return a

    def iter_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        for en in self.names:
            yield en, self.get(en)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files = {}

    def __enter__(self) -> "HFCheckpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_json(path: Path):
    """A checkpoint's JSON file (config, index) under the readers' limits (limits.py)."""
    try:
        limits.check_header_size(path.stat().st_size, str(path), ConversionError)
        raw = path.read_bytes()
    except OSError as e:
        raise ConversionError(f"{path}: cannot read: {e}") from None
    return limits.parse_json_header(raw, str(path), ConversionError)


def _hf_example(en: str) -> str:
    if en == "token_embd":
        return "model.embed_tokens.weight"
    if en == "output_norm":
        return "model.norm.weight"
    _, i, suffix = en.split(".", 2)
    inv = {v: k for k, v in _LAYER_MAP.items()}
    return f"model.layers.{i}.{inv[suffix]}.weight"
