"""Model config of an engine file: the schema of docs/engine-file.md, one field per row there.

`ModelConfig` is frozen and validated on construction, so a config that exists is a config the
engine can run. It round-trips through JSON (`to_json` / `from_json`), which is how it is stored
in the `config` metadata entry of a `*.spark` file. `preset(name)` builds the shapes of the models
this project targets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelConfig", "preset", "PRESETS", "LAYER_GLOBAL", "LAYER_LOCAL"]

LAYER_GLOBAL = "global"
LAYER_LOCAL = "local"
FFN_SELECT = ("gate", "abs_gelu", "abs_act", "sqrt_abs_act")


@dataclass(frozen=True)
class ModelConfig:
    """One model's shapes and behaviours. Field meanings: docs/engine-file.md, "Config"."""

    arch: str                      # "gemma2" | "gemma3" (informational)
    vocab_size: int                # e.g. 256000
    d_model: int                   # e.g. 2304
    n_layers: int                  # e.g. 26
    n_heads: int                   # e.g. 8
    n_kv_heads: int                # e.g. 4; n_heads % n_kv_heads == 0
    head_dim: int                  # e.g. 256; even (RoPE rotates pairs)
    d_ff: int                      # e.g. 9216 (dense) or 13824 (Spark)
    query_scale: float             # q multiplier before q.k, e.g. 256 ** -0.5
    layer_types: tuple[str, ...]   # "global" / "local", one per layer
    norm_eps: float = 1e-6
    attn_softcap: float = 0.0      # 0: none
    final_softcap: float = 0.0     # 0: none
    lm_head_screen_margin: float = 0.0  # 0: exact LM head; m > 0: screened by token_embd_screen
    qk_norm: bool = False
    sliding_window: int = 4096     # local layers: itself plus sliding_window - 1 earlier keys
    rope_base_global: float = 10000.0
    rope_base_local: float = 10000.0
    rope_scale_global: float = 1.0
    ffn_predictor_dim: int = 0     # 0: dense GeGLU FFN; r > 0: Spark FFN
    ffn_topk_fraction: float = 0.08
    attn_predictor_dim: int = 0    # 0: dense attention; r_a > 0: Spark attention
    attn_topk: int = 256
    # Sparsified dense FFN (training-free; docs/engine-file.md): 0 = off.
    ffn_sparse_fraction: float = 0.0            # target kept fraction F, e.g. 0.5
    ffn_sparse_quantiles: tuple[float, ...] = ()  # Q_l per layer (calibrated), or () = Q(1 - F)
    ffn_gate_rank: int = 0                      # 0: select on the exact gate; R: on B (A x)
    ffn_select_weighted: bool = False           # score times c_i (tensor ffn_select)
    ffn_select_by: str = "gate"                 # score: "gate" p, "abs_gelu" |gelu(p)|, or
                                                # "abs_act" |gelu(g) (W_up x)| (dense gate, up),
                                                # "sqrt_abs_act" its square root
    # Sparsified dense attention (rotated keys, pooled top-k): attn_sparse_topk 0 = off.
    attn_sparse_topk: int = 0                   # K, e.g. 128
    attn_sparse_dim: int = 0                    # predictor dims r_a of the rotated keys
    attn_sparse_recent: int = 0                 # newest tokens always kept
    bos_id: int = 2
    eos_id: int = 1
    pad_id: int = 0
    start_of_turn_id: int = 105
    end_of_turn_id: int = 106

    def __post_init__(self) -> None:
        # JSON gives lists; a frozen, hashable config wants a tuple.
        if isinstance(self.layer_types, list):
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if isinstance(self.ffn_sparse_quantiles, list):
            object.__setattr__(self, "ffn_sparse_quantiles",
                               tuple(float(q) for q in self.ffn_sparse_quantiles))
        # JSON may spell 1.0 as 1; store floats as floats so to_json is stable.
        for name in _FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        self.validate()

    # ----------------------------------------------------------------------------- validation

    def validate(self) -> None:
        """Raise ValueError, in plain words, if any field is out of range or inconsistent.

        The rules are the engine's own (`_core.validate_config`, cpp/model/config.cc): one
        validator, so every config this class accepts is one the engine reads. Checked here
        first is only what JSON cannot carry to it: Python types, and NaN or infinity."""
        _check_types(self)
        for name in _FLOAT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")
        if not all(math.isfinite(q) for q in self.ffn_sparse_quantiles):
            raise ValueError("ffn_sparse_quantiles must be finite numbers")
        from . import _core

        try:
            _core.validate_config(self.to_json())
        except _core.FormatError as e:
            raise ValueError(str(e).removeprefix("config: ")) from None

    # ----------------------------------------------------------------------------- helpers

    @property
    def is_sparse_ffn(self) -> bool:
        """True when the FFN is the sparsified dense FFN (ffn_sparse_fraction > 0)."""
        return self.ffn_sparse_fraction > 0

    @property
    def is_sparse_attn(self) -> bool:
        """True when attention is the sparsified (rotated, pooled top-k) kind."""
        return self.attn_sparse_topk > 0

    def ffn_quantile(self, layer: int) -> float:
        """Q_l of the sparsified FFN: the calibrated value, else Q(1 - ffn_sparse_fraction)."""
        if self.ffn_sparse_quantiles:
            return self.ffn_sparse_quantiles[layer]
        from .reference import normal_quantile
        return normal_quantile(1.0 - self.ffn_sparse_fraction)

    @property
    def is_spark_ffn(self) -> bool:
        """True when every layer's FFN is the Spark FFN (ffn_predictor_dim > 0)."""
        return self.ffn_predictor_dim > 0

    @property
    def is_spark_attn(self) -> bool:
        """True when every layer's attention is Spark attention (attn_predictor_dim > 0)."""
        return self.attn_predictor_dim > 0

    def is_local(self, layer: int) -> bool:
        """True when `layer` is a sliding-window layer."""
        return self.layer_types[layer] == LAYER_LOCAL

    def rope_base(self, layer: int) -> float:
        return self.rope_base_local if self.is_local(layer) else self.rope_base_global

    def rope_scale(self, layer: int) -> float:
        """Positions of `layer` are divided by this (linear scaling applies to global layers)."""
        return 1.0 if self.is_local(layer) else self.rope_scale_global

    # ----------------------------------------------------------------------------- JSON

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        d["ffn_sparse_quantiles"] = list(self.ffn_sparse_quantiles)
        return d

    def to_json(self) -> str:
        """Compact JSON with every field, in declaration order."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in d and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"missing config field(s): {', '.join(missing)}")
        layer_types = d.get("layer_types")
        if not isinstance(layer_types, (list, tuple)):
            raise ValueError("layer_types must be a list of 'global' / 'local'")
        quantiles = d.get("ffn_sparse_quantiles", ())
        if not isinstance(quantiles, (list, tuple)):
            raise ValueError("ffn_sparse_quantiles must be a list of numbers")
        return cls(**{**d, "layer_types": tuple(layer_types),
                      "ffn_sparse_quantiles": tuple(quantiles)})

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelConfig:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated). Changing n_layers alone re-derives
        layer_types by repeating the current pattern."""
        if "n_layers" in changes and "layer_types" not in changes:
            n = changes["n_layers"]
            pattern = self.layer_types
            changes["layer_types"] = tuple(pattern[i % len(pattern)] for i in range(max(n, 0)))
        return dataclasses.replace(self, **changes)


_INT_FIELDS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
               "sliding_window", "ffn_predictor_dim", "attn_predictor_dim", "attn_topk",
               "ffn_gate_rank", "attn_sparse_topk", "attn_sparse_dim", "attn_sparse_recent", "bos_id",
               "eos_id", "pad_id", "start_of_turn_id", "end_of_turn_id")
_FLOAT_FIELDS = ("query_scale", "norm_eps", "attn_softcap", "final_softcap", "lm_head_screen_margin",
                 "rope_base_global",
                 "rope_base_local", "rope_scale_global", "ffn_topk_fraction", "ffn_sparse_fraction")


def _check_types(cfg: ModelConfig) -> None:
    # bool is an int subclass in Python; a config with `"d_model": true` is a mistake.
    for name in _INT_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    for name in _FLOAT_FIELDS:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
    for name in ("qk_norm", "ffn_select_weighted"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if not isinstance(cfg.ffn_sparse_quantiles, tuple) or any(
            isinstance(q, bool) or not isinstance(q, (int, float)) for q in cfg.ffn_sparse_quantiles):
        raise ValueError("ffn_sparse_quantiles must be a list of numbers")
    if not isinstance(cfg.ffn_select_by, str):
        raise ValueError(f"ffn_select_by must be a string, got {cfg.ffn_select_by!r}")
    if not isinstance(cfg.arch, str):
        raise ValueError(f"arch must be a string, got {cfg.arch!r}")
    if not isinstance(cfg.layer_types, tuple):
        raise ValueError("layer_types must be a list of 'global' / 'local'")


# --------------------------------------------------------------------------------- presets

def _gemma2_layers(n_layers: int) -> tuple[str, ...]:
    # Gemma 2 alternates, starting with a sliding-window layer at layer 0.
    return tuple(LAYER_LOCAL if i % 2 == 0 else LAYER_GLOBAL for i in range(n_layers))


def _gemma3_layers(n_layers: int) -> tuple[str, ...]:
    # Gemma 3: five local layers, then one global: layer i is global iff (i + 1) % 6 == 0.
    return tuple(LAYER_GLOBAL if (i + 1) % 6 == 0 else LAYER_LOCAL for i in range(n_layers))


def _gemma2_2b() -> ModelConfig:
    # Gemma 2's tokenizer puts <start_of_turn>/<end_of_turn> at 106/107 (Gemma 3's at 105/106).
    return ModelConfig(
        arch="gemma2", vocab_size=256000, d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4,
        head_dim=256, d_ff=9216, query_scale=1.0 / 16.0, layer_types=_gemma2_layers(26),
        attn_softcap=50.0, final_softcap=30.0, qk_norm=False, sliding_window=4096,
        rope_base_global=10000.0, rope_base_local=10000.0, start_of_turn_id=106,
        end_of_turn_id=107)


def _spark_2b() -> ModelConfig:
    # d_ff 13824 = 1.5 * 9216 matches the gated FFN's parameter count (Spark Transformer paper, You et al. 2025, section 2.2).
    return _gemma2_2b().replace(d_ff=13824, ffn_predictor_dim=1024, ffn_topk_fraction=0.08,
                                attn_predictor_dim=128, attn_topk=256)


def _gemma3_270m() -> ModelConfig:
    return ModelConfig(
        arch="gemma3", vocab_size=262144, d_model=640, n_layers=18, n_heads=4, n_kv_heads=1,
        head_dim=256, d_ff=2048, query_scale=1.0 / 16.0, layer_types=_gemma3_layers(18),
        qk_norm=True, sliding_window=512, rope_base_global=1_000_000.0, rope_base_local=10000.0)


def _gemma3_1b() -> ModelConfig:
    return ModelConfig(
        arch="gemma3", vocab_size=262144, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1,
        head_dim=256, d_ff=6912, query_scale=1.0 / 16.0, layer_types=_gemma3_layers(26),
        qk_norm=True, sliding_window=512, rope_base_global=1_000_000.0, rope_base_local=10000.0)


def _spark_gemma3_270m() -> ModelConfig:
    return _gemma3_270m().replace(d_ff=3072, ffn_predictor_dim=320, ffn_topk_fraction=0.08,
                                  attn_predictor_dim=128, attn_topk=256)


PRESETS = {
    "gemma2-2b": _gemma2_2b,
    "spark-2b": _spark_2b,
    "gemma3-270m": _gemma3_270m,
    "gemma3-1b": _gemma3_1b,
    "spark-gemma3-270m": _spark_gemma3_270m,
}


def preset(name: str) -> ModelConfig:
    """The config of a named model shape: one of PRESETS."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}") from None
