"""Shared pytest fixtures.

`target`: runs a test once per SIMD target that this build compiled and this CPU supports,
forcing the kernels onto it (test ids are the target names, e.g. test_matvec[AVX2-...]).
`bf16_modes` / `set_bf16`: the AVX512_BF16 switch of the bf16 chunk matmul, for tests;
`vnni_modes` / `set_vnni` the same for the AVX512_VNNI byte tiles.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from spark_infer import _core

# [(name, bit)], best first; the module reads this list once at import, before any test narrows
# the set by forcing a target.
TARGETS: list[tuple[str, int]] = list(_core.supported_targets())


@pytest.fixture(params=[bit for _, bit in TARGETS], ids=[name for name, _ in TARGETS])
def target(request: pytest.FixtureRequest) -> Iterator[str]:
    """Forces one SIMD target for the test's duration; yields its name. Restores the best after."""
    name = dict((bit, n) for n, bit in TARGETS)[request.param]
    _core.set_target(request.param)
    try:
        # A fixture that forced nothing would make every "per-target" test the same test.
        assert _core.current_target() == name
        yield name
    finally:
        _core.set_target(0)


def bf16_modes(target: str) -> list[bool | None]:
    """The bf16 chunk matmul tiles a target runs on this CPU: AVX3 with AVX512_BF16 has two
    (its vdpbf16ps tile and the plain one, _core.set_avx512_bf16), other targets one (None:
    the CPU's default). Tests loop over them inside a target."""
    return [True, False] if target == "AVX3" and _core.has_avx512_bf16() else [None]


def set_bf16(mode: bool | None) -> None:
    _core.set_avx512_bf16(_core.has_avx512_bf16() if mode is None else mode)


def vnni_modes(target: str) -> list[bool | None]:
    """The AVX3 byte tiles' paths to run on this CPU (q4 / q5 decode, the LM-head screen):
    its AVX512_VNNI tile and the plain one (_core.set_avx512_vnni); None: the target has one."""
    return [True, False] if target == "AVX3" and _core.has_avx512_vnni() else [None]


def set_vnni(mode: bool | None) -> None:
    _core.set_avx512_vnni(_core.has_avx512_vnni() if mode is None else mode)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random model with a real tokenizer (tests/tiny_model.py), written once per session."""
    from tiny_model import write_tiny_model

    path = str(tmp_path_factory.mktemp("tiny") / "tiny.spark")
    write_tiny_model(path)
    return path
