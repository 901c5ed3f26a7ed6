"""The weight types, one home: each type's layout, encoder and decoder (the C++ side of the same
layouts, and their SIMD decoders, is cpp/weights/).

- ``bf16.py``: bf16 bit patterns (uint16), ``f32_to_bf16`` (nearest even) / ``bf16_to_f32``.
- ``int8.py``: per-row symmetric int8 with an f32 scale per row, ``quantize_int8`` /
  ``dequantize_int8``.
- ``q4.py``: GGML's Q4_1 blocks of 32 weights (f16 d, f16 m, 16 code bytes), ``quantize_q4`` /
  ``dequantize_q4`` and the steps of the encoder (``q4_fit``, ``q4_stored_params``,
  ``q4_codes``, ``q4_pack``, ``q4_encode``) for fits that build their own blocks.
- ``q5.py``: GGML's Q5_0 blocks of 32 weights (f16 d, u32 qh, 16 code bytes), ``quantize_q5``
  (GGML's own rule, so a dequantized Q5_0 block comes back bit-exactly) / ``dequantize_q5``.
- ``screen4.py``: the LM-head screen's layout (4-bit symmetric codes, blocks of 128 weights
  with an f32 scale, 4 rows interleaved per tile; not a matrix type users pick, only
  ``token_embd_screen`` has it): ``screen4_shape``, ``quantize_screen4`` (with its fit,
  ``screen4_fit``), ``dequantize_screen4`` and the decode product the engine computes,
  ``screen4_quantize_x`` / ``screen4_logits``.
- ``dtypes.py``: the type names (``DTYPES``), each one's safetensors dtype, element size and
  stored shape (q4 and q5 are both U8, told apart by the row bytes: ``stored_type``), and
  ``encode`` / ``decode``: the one switch over types.

It imports numpy only, nothing else of spark_infer: ``fileformat`` (the engine-file writer),
``reference`` and ``convert`` import it.
"""

from .bf16 import bf16_to_f32, f32_to_bf16
from .dtypes import (BLOCK_BYTES, DTYPES, ITEMSIZE, ST_DTYPE, decode, encode, logical_shape,
                     stored_shape, stored_type)
from .int8 import dequantize_int8, quantize_int8
from .q4 import (Q4_BLOCK_BYTES, Q4_GROUP, dequantize_q4, q4_codes, q4_encode, q4_fit, q4_pack,
                 q4_stored_params, quantize_q4)
from .q5 import Q5_BLOCK_BYTES, dequantize_q5, quantize_q5
from .screen4 import (SCREEN_BLOCK_BYTES, SCREEN_GROUP, SCREEN_ROWS, dequantize_screen4,
                      quantize_screen4, screen4_fit, screen4_logits, screen4_quantize_x,
                      screen4_shape)

__all__ = [
    "bf16_to_f32", "f32_to_bf16", "BLOCK_BYTES", "DTYPES", "ITEMSIZE", "ST_DTYPE", "decode",
    "encode", "logical_shape", "stored_shape", "stored_type", "dequantize_int8", "quantize_int8", "Q4_BLOCK_BYTES",
    "Q4_GROUP", "dequantize_q4", "q4_codes", "q4_encode", "q4_fit", "q4_pack",
    "q4_stored_params", "quantize_q4", "Q5_BLOCK_BYTES", "dequantize_q5", "quantize_q5",
    "SCREEN_BLOCK_BYTES", "SCREEN_GROUP", "SCREEN_ROWS", "dequantize_screen4", "quantize_screen4",
    "screen4_fit", "screen4_logits", "screen4_quantize_x", "screen4_shape",
]
