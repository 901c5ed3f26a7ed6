"""Fast GGUF reader and the GGUF (``gemma2`` / ``gemma3``) -> engine-file mapping.

``gguf.GGUFReader`` builds a numpy object per token string and needs ~20 s for a 262k-token
vocabulary.  :class:`GGUFFile` parses the header, all key/values and the tensor infos with
``struct`` over an ``mmap`` instead (a fraction of a second), and dequantizes one tensor at a
time with ``gguf.quants`` (so every ggml type that ``gguf`` supports is supported here).

Conventions (checked on the real ``gemma-3-270m`` Q4_K_M file, see ``docs`` of the converter):

* GGUF shapes are ``[ne0, ne1, ...]`` with ``ne0`` the fastest-varying (input) dimension; the
  numpy array is ``reversed(shape)``, i.e. ``[out, in]`` for a matrix, like a torch Linear.
* llama.cpp's ``convert_hf_to_gguf.py`` adds 1 to every Gemma ``*norm.weight`` (it stores the
  effective RMSNorm gain ``1 + w``); the engine file stores ``w``, so 1 is subtracted from all
  norm vectors (``attn_norm``, ``post_attention_norm``, ``ffn_norm``, ``post_ffw_norm``,
  ``attn_q_norm``, ``attn_k_norm``, ``output_norm``).
* The LM head is tied to ``token_embd``.
"""

from __future__ import annotations

import mmap
import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import limits
from ._errors import ConversionError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4

# GGUF metadata value types
_T_UINT8, _T_INT8, _T_UINT16, _T_INT16, _T_UINT32, _T_INT32, _T_FLOAT32, _T_BOOL = range(8)
_T_STRING, _T_ARRAY, _T_UINT64, _T_INT64, _T_FLOAT64 = 8, 9, 10, 11, 12

_SCALAR_FMT = {
    _T_UINT8: "<B", _T_INT8: "<b", _T_UINT16: "<H", _T_INT16: "<h", _T_UINT32: "<I",
    _T_INT32: "<i", _T_FLOAT32: "<f", _T_BOOL: "<?", _T_UINT64: "<Q", _T_INT64: "<q",
    _T_FLOAT64: "<d",
}
_SCALAR_NP = {
    _T_UINT8: "<u1", _T_INT8: "<i1", _T_UINT16: "<u2", _T_INT16: "<i2", _T_UINT32: "<u4",
    _T_INT32: "<i4", _T_FLOAT32: "<f4", _T_BOOL: "<u1", _T_UINT64: "<u8", _T_INT64: "<i8",
    _T_FLOAT64: "<f8",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


def _ggml_sizes() -> dict[int, tuple[int, int]]:
    from gguf.constants import GGML_QUANT_SIZES

    return {int(k): v for k, v in GGML_QUANT_SIZES.items()}


def ggml_type_name(t: int) -> str:
    from gguf.constants import GGMLQuantizationType

    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type{t}"


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor info: ``shape`` is in GGUF order (``ne0`` first); ``offset`` is absolute."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def np_shape(self) -> tuple[int, ...]:
        return tuple(reversed(self.shape))

    @property
    def type_name(self) -> str:
        return ggml_type_name(self.ggml_type)


class GGUFFile:
    """A memory-mapped GGUF file: ``metadata`` (dict), ``tensors`` (dict name -> GGUFTensor, in
    file order), ``raw(name)`` (uint8 view of the tensor bytes, valid while the file is open),
    ``dequantize(name)`` (float32 array of shape ``reversed(shape)``, owned).

    Numeric metadata arrays are numpy arrays, string arrays are lists of ``str``.
    Any malformed or truncated content raises :class:`ConversionError`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as e:
            raise ConversionError(f"{self.path}: cannot open GGUF file: {e}") from e
        try:
            self.size = os.fstat(self._fh.fileno()).st_size
            if self.size < 24:
                raise ConversionError(f"{self.path}: not a GGUF file (only {self.size} bytes)")
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- context manager -------------------------------------------------------------------
    def close(self) -> None:
        mm = getattr(self, "_mm", None)
        if mm is not None:
            try:
                mm.close()
            except BufferError:  # a view is still alive; the GC will unmap it
                pass
            self._mm = None
        fh = getattr(self, "_fh", None)
        if fh is not None:
            fh.close()
            self._fh = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- parsing ---------------------------------------------------------------------------
    def _err(self, msg: str) -> ConversionError:
        return ConversionError(f"{self.path}: {msg}")

    def _need(self, off: int, n: int, what: str) -> None:
        if n < 0 or off + n > self.size:
            raise self._err(f"truncated or corrupt GGUF: {what} needs bytes [{off}, {off + n}) "
                            f"but the file has {self.size} bytes")

    def _u32(self, off: int, what: str) -> int:
        self._need(off, 4, what)
        return _U32.unpack_from(self._mm, off)[0]

    def _u64(self, off: int, what: str) -> int:
        self._need(off, 8, what)
        return _U64.unpack_from(self._mm, off)[0]

    def _str(self, off: int, what: str) -> tuple[str, int]:
        n = self._u64(off, what)
        off += 8
        self._need(off, n, what)
        b = self._mm[off:off + n]
        try:
            s = b.decode("utf-8")
        except UnicodeDecodeError:
            s = b.decode("utf-8", errors="surrogateescape")
        return s, off + n

    def _value(self, vtype: int, off: int, what: str, depth: int = 0) -> tuple[Any, int]:
        if vtype == _T_STRING:
            return self._str(off, what)
        if vtype in _SCALAR_FMT:
            fmt = _SCALAR_FMT[vtype]
            n = struct.calcsize(fmt)
            self._need(off, n, what)
            return struct.unpack_from(fmt, self._mm, off)[0], off + n
        if vtype == _T_ARRAY:
            limits.check_depth(depth + 1, self._where(what), ConversionError)
            etype = self._u32(off, what)
            count = self._u64(off + 4, what)
            off += 12
            # Each item's least size: its bytes, a string's u64 length, an array's type + count.
            least = {_T_STRING: 8, _T_ARRAY: 12}.get(etype) or (
                np.dtype(_SCALAR_NP[etype]).itemsize if etype in _SCALAR_NP else 0)
            if least == 0:
                raise self._err(f"corrupt GGUF: {what}: unknown array element type {etype}")
            limits.check_count(count, least, self.size - off, self._where(what), ConversionError)
            if etype in _SCALAR_NP:
                dt = np.dtype(_SCALAR_NP[etype])
                arr = np.frombuffer(self._mm, dtype=dt, count=count, offset=off).copy()
                if etype == _T_BOOL:
                    arr = arr.astype(bool)
                return arr, off + count * dt.itemsize
            if etype == _T_STRING:
                return self._str_array(count, off, what)
            out = []
            for _ in range(count):
                v, off = self._value(_T_ARRAY, off, what, depth + 1)
                out.append(v)
            return out, off
        raise self._err(f"corrupt GGUF: {what}: unknown value type {vtype}")

    def _where(self, what: str) -> str:
        return f"{self.path}: corrupt GGUF: {what}"

    def _str_array(self, count: int, off: int, what: str) -> tuple[list[str], int]:
        mm, size = self._mm, self.size
        unpack = _U64.unpack_from
        out: list[str] = [""] * count
        try:
            for i in range(count):
                n = unpack(mm, off)[0]
                off += 8
                end = off + n
                if end > size:
                    raise struct.error
                b = mm[off:end]
                try:
                    out[i] = b.decode("utf-8")
                except UnicodeDecodeError:
                    out[i] = b.decode("utf-8", errors="surrogateescape")
                off = end
        except struct.error:
            raise self._err(f"truncated or corrupt GGUF: string array {what} runs past the end "
                            f"of the file ({size} bytes)") from None
        return out, off

    def _parse(self) -> None:
        mm = self._mm
        if mm[:4] != GGUF_MAGIC:
            raise self._err(f"not a GGUF file (magic {bytes(mm[:4])!r})")
        self.version = self._u32(4, "version")
        if self.version not in (2, 3):
            if self.version > 0xFFFF:
                raise self._err("big-endian GGUF files are not supported")
            raise self._err(f"unsupported GGUF version {self.version} (need 2 or 3)")
        n_tensors = self._u64(8, "tensor count")
        n_kv = self._u64(16, "key/value count")
        # Least sizes: a key/value is a key length, a type and a 1-byte value (13 bytes); a
        # tensor info a name length, a dim count, one dim, a type and an offset (32 bytes).
        limits.check_count(n_kv, 13, self.size - 24, self._where("key/values"), ConversionError)
        limits.check_count(n_tensors, 32, self.size - 24, self._where("tensor infos"),
                           ConversionError)
        off = 24
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key, off = self._str(off, f"key #{i}")
            vtype = self._u32(off, f"type of {key!r}")
            val, off = self._value(vtype, off + 4, repr(key))
            meta[key] = val
        self.metadata = meta
        align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise self._err(f"invalid general.alignment {align!r}")
        self.alignment = align

        infos = []
        for i in range(n_tensors):
            name, off = self._str(off, f"name of tensor #{i}")
            nd = self._u32(off, f"tensor {name!r}")
            off += 4
            if nd < 1 or nd > _MAX_DIMS:
                raise self._err(f"corrupt GGUF: tensor {name!r} has {nd} dimensions")
            self._need(off, 8 * nd + 12, f"tensor {name!r} info")
            dims = struct.unpack_from(f"<{nd}Q", mm, off)
            off += 8 * nd
            gtype = _U32.unpack_from(mm, off)[0]
            rel = _U64.unpack_from(mm, off + 4)[0]
            off += 12
            infos.append((name, gtype, dims, rel))
        self.data_offset = (off + align - 1) // align * align

        sizes = _ggml_sizes()
        tensors: dict[str, GGUFTensor] = {}
        for name, gtype, dims, rel in infos:
            if gtype not in sizes:
                raise self._err(f"tensor {name!r}: unknown ggml type {gtype}")
            block, tsize = sizes[gtype]
            n_el = 1
            for d in dims:
                n_el *= d
            if dims[0] % block:
                raise self._err(f"tensor {name!r}: row length {dims[0]} is not a multiple of "
                                f"the {ggml_type_name(gtype)} block size {block}")
            nbytes = n_el // block * tsize
            start = self.data_offset + rel
            if start + nbytes > self.size:
                raise self._err(
                    f"truncated GGUF: tensor {name!r} ({ggml_type_name(gtype)}, shape "
                    f"{list(dims)}) needs bytes [{start}, {start + nbytes}) but the file has "
                    f"{self.size} bytes")
            if name in tensors:
                raise self._err(f"corrupt GGUF: duplicate tensor {name!r}")
            tensors[name] = GGUFTensor(name, gtype, tuple(int(d) for d in dims), start, nbytes)
        self.tensors = tensors

    # -- tensor access ---------------------------------------------------------------------
    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def raw(self, name: str) -> np.ndarray:
        """uint8 view of the tensor's bytes (only valid while the file stays open)."""
        t = self._tensor(name)
        return np.frombuffer(self._mm, dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def _tensor(self, name: str) -> GGUFTensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise self._err(f"missing tensor {name!r}") from None

    def dequantize(self, name: str, chunk_bytes: int = 1 << 23) -> np.ndarray:
        """float32 copy of tensor ``name`` with numpy shape ``reversed(shape)``."""
        from gguf.quants import dequantize as gg_dequantize

        t = self._tensor(name)
        raw = self.raw(name)
        cols = t.shape[0]
        rows = _n_rows(t.shape)
        row_bytes = t.nbytes // rows if rows else 0
        out = np.empty((rows, cols), dtype=np.float32)
        if rows == 0 or cols == 0:
            return out.reshape(t.np_shape)
        raw = raw.reshape(rows, row_bytes)
        step = max(1, chunk_bytes // max(1, cols * 4))
        try:
            if t.ggml_type == 0:  # F32
                out[...] = raw.view("<f4")
            elif t.ggml_type == 1:  # F16
                for a in range(0, rows, step):
                    out[a:a + step] = raw[a:a + step].view("<f2")
            elif t.ggml_type == 30:  # BF16
                for a in range(0, rows, step):
                    u = raw[a:a + step].view("<u2").astype(np.uint32) << 16
                    out[a:a + step] = u.view(np.float32)
            else:
                from gguf.constants import GGMLQuantizationType

                q = GGMLQuantizationType(t.ggml_type)
                for a in range(0, rows, step):
                    out[a:a + step] = gg_dequantize(raw[a:a + step], q).reshape(-1, cols)
        except NotImplementedError as e:
            raise self._err(f"tensor {name!r}: ggml type {t.type_name} cannot be dequantized "
                            f"by the installed gguf package ({e})") from e
        finally:
            del raw
        return out.reshape(t.np_shape)


def _n_rows(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape[1:]:
        n *= d
    return n


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key/values of a GGUF file (fast)."""
    with GGUFFile(path) as f:
        return f.metadata


# ---------------------------------------------------------------------------------------------
# gemma2 / gemma3 -> engine config and tensors
# ---------------------------------------------------------------------------------------------

SUPPORTED_ARCHS = ("gemma2", "gemma3")

# GGUF tensor name (without ".weight") -> engine name; {i} = block index.
_BLOCK_MAP = {
    "attn_q": "attn_q", "attn_k": "attn_k", "attn_v": "attn_v", "attn_output": "attn_output",
    "attn_norm": "attn_norm", "post_attention_norm": "attn_post_norm",
    "ffn_norm": "ffn_norm", "post_ffw_norm": "ffn_post_norm",
    "attn_q_norm": "attn_q_norm", "attn_k_norm": "attn_k_norm",
    "ffn_gate": "ffn_gate", "ffn_up": "ffn_up", "ffn_down": "ffn_down",
}
_NORMS = {"attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm", "attn_q_norm",
          "attn_k_norm"}


def _meta_get(meta: dict, key: str, path: str, default: Any = None, required: bool = False):
    if key in meta:
        return meta[key]
    if required:
        raise ConversionError(f"{path}: missing GGUF metadata field {key!r}")
    return default


def _scalar(v: Any, key: str, path: str, kind=int):
    if kind is float and isinstance(v, float):
        # GGUF stores float32: 1e-6 reads back as 9.99999997e-07; use the shortest decimal
        # that rounds to the same float32.
        f32 = np.float32(v)
        if float(f32) == v:
            return float(str(f32))
        return v
    if isinstance(v, np.ndarray):
        if v.size == 0:
            raise ConversionError(f"{path}: GGUF metadata field {key!r} is an empty array")
        if np.any(v != v.flat[0]):
            raise ConversionError(f"{path}: GGUF metadata field {key!r} varies per layer "
                                  f"({v.tolist()}); not supported")
        v = v.flat[0].item()
    if isinstance(v, (list, str)):
        raise ConversionError(f"{path}: GGUF metadata field {key!r} has a bad value {v!r}")
    return kind(v)


def _is_27b(arch: str, n_layers: int, d_model: int) -> bool:
    return (arch == "gemma2" and n_layers == 46 and d_model == 4608) or (
        arch == "gemma3" and n_layers == 62 and d_model == 5376)


def gguf_config_fields(meta: dict, path: str = "<gguf>", tensors: dict | None = None) -> dict:
    """Engine config fields (a dict for ``ModelConfig(**fields)``) from GGUF metadata.

    Missing optional keys fall back to what llama.cpp assumes for the architecture.
    """
    arch = str(meta.get("general.architecture", ""))
    if arch not in SUPPORTED_ARCHS:
        raise ConversionError(f"{path}: unsupported architecture {arch!r} "
                              f"(supported: {', '.join(SUPPORTED_ARCHS)})")

    def g(k, default=None, required=False, kind=int):
        key = f"{arch}.{k}"
        v = _meta_get(meta, key, path, default, required)
        return v if v is None else _scalar(v, key, path, kind)

    d_model = g("embedding_length", required=True)
    n_layers = g("block_count", required=True)
    if tensors is not None:
        limits.check_layers(n_layers, len(tensors), f"{path}: {arch}.block_count", ConversionError)
    d_ff = g("feed_forward_length", required=True)
    n_heads = g("attention.head_count", required=True)
    n_kv = g("attention.head_count_kv", default=n_heads)
    head_dim = g("attention.key_length", default=None)
    if head_dim is None:
        if n_heads <= 0 or d_model % n_heads:
            raise ConversionError(f"{path}: cannot infer head_dim from "
                                  f"{arch}.embedding_length={d_model} and head_count={n_heads}")
        head_dim = d_model // n_heads
    vdim = g("attention.value_length", default=head_dim)
    if vdim != head_dim:
        raise ConversionError(f"{path}: {arch}.attention.value_length={vdim} differs from "
                              f"key_length={head_dim}; not supported")
    eps = g("attention.layer_norm_rms_epsilon", default=1e-6, kind=float)
    window = g("attention.sliding_window", default=4096 if arch == "gemma2" else 512)

    # llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA2/GEMMA3): f_attention_scale is
    # 1/sqrt(n_embd/n_head) for the 27B models, else 1/sqrt(head_dim) -- this matches HF's
    # query_pre_attn_scalar (144 for Gemma 2 27B, 168 for Gemma 3 27B, head_dim otherwise).
    qpas = d_model // n_heads if _is_27b(arch, n_layers, d_model) else head_dim
    attn_scale = meta.get(f"{arch}.attention.scale")
    query_scale = float(attn_scale) if attn_scale else float(qpas) ** -0.5

    if arch == "gemma2":
        attn_softcap = g("attn_logit_softcapping", default=50.0, kind=float)
        final_softcap = g("final_logit_softcapping", default=30.0, kind=float)
        rope_global = g("rope.freq_base", default=10000.0, kind=float)
        rope_local = rope_global
        pattern = 2
        qk_norm = False
    else:
        attn_softcap = g("attn_logit_softcapping", default=0.0, kind=float)
        final_softcap = g("final_logit_softcapping", default=0.0, kind=float)
        rope_global = g("rope.freq_base", default=1e6, kind=float)
        # llama.cpp hard-codes 10000 for gemma3's sliding-window layers
        rope_local = g("rope.freq_base_swa", default=10000.0, kind=float)
        pattern = 6
        qk_norm = True
    if tensors is not None:
        qk_norm = "blk.0.attn_q_norm.weight" in tensors
        if arch == "gemma3" and not qk_norm:
            raise ConversionError(f"{path}: missing tensor 'blk.0.attn_q_norm.weight'")

    rope_scale = 1.0
    stype = meta.get(f"{arch}.rope.scaling.type")
    if stype not in (None, "", "none"):
        if stype != "linear":
            raise ConversionError(f"{path}: unsupported {arch}.rope.scaling.type {stype!r}")
        rope_scale = g("rope.scaling.factor", default=1.0, kind=float) or 1.0

    swa_pat = meta.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(swa_pat, np.ndarray) and swa_pat.size == n_layers:
        layer_types = ["local" if bool(x) else "global" for x in swa_pat]
    else:
        if swa_pat is not None:
            pattern = _scalar(swa_pat, f"{arch}.attention.sliding_window_pattern", path)
        # llama.cpp set_swa_pattern(n): layer i is sliding unless i % n == n - 1
        layer_types = ["global" if pattern <= 1 or i % pattern == pattern - 1 else "local"
                       for i in range(n_layers)]

    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = len(tokens) if tokens is not None else g("vocab_size", default=None)
    if vocab is None and tensors is not None and "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[1]
    if vocab is None:
        raise ConversionError(f"{path}: cannot determine the vocabulary size "
                              "(no tokenizer.ggml.tokens and no token_embd)")

    def tok_id(key, default):
        v = meta.get(f"tokenizer.ggml.{key}")
        return int(v) if v is not None else default

    sot, eot = _turn_ids(tokens, vocab)
    return dict(
        arch=arch, vocab_size=int(vocab), d_model=d_model, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv, head_dim=head_dim, d_ff=d_ff, norm_eps=eps, query_scale=query_scale,
        attn_softcap=attn_softcap, final_softcap=final_softcap, qk_norm=qk_norm,
        layer_types=layer_types, sliding_window=window, rope_base_global=rope_global,
        rope_base_local=rope_local, rope_scale_global=float(rope_scale),
        ffn_predictor_dim=0, attn_predictor_dim=0,
        bos_id=tok_id("bos_token_id", 2), eos_id=tok_id("eos_token_id", 1),
        pad_id=tok_id("padding_token_id", 0), start_of_turn_id=sot, end_of_turn_id=eot,
    )


def _turn_ids(tokens: list[str] | None, vocab: int) -> tuple[int, int]:
    """<start_of_turn> / <end_of_turn> ids: from the vocabulary when known, else the Gemma
    defaults (Gemma 3's 262k vocab: 105/106; Gemma 2's 256k vocab: 106/107)."""
    if tokens is not None:
        try:
            return tokens.index("<start_of_turn>"), tokens.index("<end_of_turn>")
        except ValueError:
            pass
    return (106, 107) if vocab == 256000 else (105, 106)


def expected_gguf_shapes(fields: dict) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name -> expected numpy shape ([out, in]) for the config fields."""
    d, hd, ff = fields["d_model"], fields["head_dim"], fields["d_ff"]
    q, kv = fields["n_heads"] * hd, fields["n_kv_heads"] * hd
    shapes = {"token_embd.weight": (fields["vocab_size"], d), "output_norm.weight": (d,)}
    for i in range(fields["n_layers"]):
        p = f"blk.{i}."
        shapes.update({
            p + "attn_q.weight": (q, d), p + "attn_k.weight": (kv, d),
            p + "attn_v.weight": (kv, d), p + "attn_output.weight": (d, q),
            p + "attn_norm.weight": (d,), p + "post_attention_norm.weight": (d,),
            p + "ffn_norm.weight": (d,), p + "post_ffw_norm.weight": (d,),
            p + "ffn_gate.weight": (ff, d), p + "ffn_up.weight": (ff, d),
            p + "ffn_down.weight": (d, ff),
        })
        if fields["qk_norm"]:
            shapes[p + "attn_q_norm.weight"] = (hd,)
            shapes[p + "attn_k_norm.weight"] = (hd,)
    return shapes


_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)\.weight$")


def engine_name(gguf_name: str) -> str | None:
    """Engine tensor name for a GGUF tensor name (None: not used by the engine)."""
    if gguf_name == "token_embd.weight":
        return "token_embd"
    if gguf_name == "output_norm.weight":
        return "output_norm"
    m = _BLK_RE.match(gguf_name)
    if m and m.group(2) in _BLOCK_MAP:
        return f"blk.{m.group(1)}.{_BLOCK_MAP[m.group(2)]}"
    return None


# GGML types by the engine type that holds them with at least their bits (`precision_kind`):
# 5-bit blocks as q5 (Q5_0 exactly, the others re-fitted), 6- and 8-bit ones as int8 (8 bits,
# a scale per row), every other quantized type (2-4.5 bits: Q4_K, Q4_0, Q4_1, Q2_K, Q3_K,
# the IQ and TQ types) as q4.
_FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})
_Q5_TYPES = frozenset({"Q5_0", "Q5_1", "Q5_K"})
_INT8_TYPES = frozenset({"Q6_K", "Q8_0", "Q8_1", "Q8_K"})


def precision_kind(ggml_type: int) -> str:
    """"float" for a float GGML type, else the engine type that keeps its precision under
    ``--dtype q4``: "q4", "q5" or "int8" (see above)."""
    name = ggml_type_name(ggml_type)
    if name in _FLOAT_TYPES:
        return "float"
    return "q5" if name in _Q5_TYPES else "int8" if name in _INT8_TYPES else "q4"


def is_norm(gguf_name: str) -> bool:
    if gguf_name == "output_norm.weight":
        return True
    m = _BLK_RE.match(gguf_name)
    return bool(m and m.group(2) in _NORMS)


def check_gguf_tensors(f: GGUFFile, fields: dict) -> dict[str, str]:
    """Check that every expected tensor is present with the right shape; return the ordered
    mapping engine name -> GGUF name.  Raises ConversionError naming the first problem."""
    expected = expected_gguf_shapes(fields)
    for name, shape in expected.items():
        t = f.tensors.get(name)
        if t is None:
            raise ConversionError(f"{f.path}: missing tensor {name!r}")
        if t.np_shape != shape:
            raise ConversionError(f"{f.path}: tensor {name!r} has shape {list(t.np_shape)} "
                                  f"(numpy order), expected {list(shape)}")
    out = f.tensors.get("output.weight")
    if out is not None:
        emb = f.tensors["token_embd.weight"]
        if out.ggml_type != emb.ggml_type or out.shape != emb.shape or not np.array_equal(
                f.raw("output.weight"), f.raw("token_embd.weight")):
            raise ConversionError(f"{f.path}: tensor 'output.weight' is an untied LM head; "
                                  "the engine only supports tied embeddings")
    return {engine_name(n): n for n in expected}


def load_gguf(path: str | os.PathLike) -> tuple[GGUFFile, dict, dict[str, str]]:
    """Open and check a GGUF file: (open GGUFFile, config fields, engine->gguf name map)."""
    f = GGUFFile(path)
    try:
        fields = gguf_config_fields(f.metadata, f.path, f.tensors)
        mapping = check_gguf_tensors(f, fields)
    except BaseException:
        f.close()
        raise
    return f, fields, mapping
