"""The vault's keystream: the same bytes however a file is cut into chunks, and no longer than needed."""

from __future__ import annotations

import secrets

import pytest

from sdd.executor.vault import CHUNK, KEY_LEN, _Xor


def _reference(key: bytes, data: bytes) -> bytes:
    stream = (key * (len(data) // KEY_LEN + 1))[:len(data)]
    return bytes(a ^ b for a, b in zip(data, stream, strict=True))


@pytest.mark.parametrize("sizes", [[0], [1], [31, 1, 33], [KEY_LEN * 3], [CHUNK, CHUNK, 5], [100, CHUNK, 3]])
def test_any_cut_gives_the_bytes_of_the_whole(sizes: list[int]) -> None:
    key = secrets.token_bytes(KEY_LEN)
    parts = [secrets.token_bytes(n) for n in sizes]
    xor = _Xor(key)
    assert b"".join(xor(p) for p in parts) == _reference(key, b"".join(parts))


def test_a_small_file_builds_a_small_stream() -> None:
    xor = _Xor(secrets.token_bytes(KEY_LEN))
    xor(b"x" * 700)
    assert len(xor.stream) <= 700 + 2 * KEY_LEN
    xor(b"y" * CHUNK)  # a big one grows it once
    assert len(xor.stream) <= CHUNK + 2 * KEY_LEN
