"""Resumable digests agree with hashlib, across save and resume, for every split."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moorage.hashing import new_resumable, resume


@pytest.mark.parametrize("algorithm", ["sha256", "sha512"])
@settings(max_examples=50, deadline=None)
@given(chunks=st.lists(st.binary(max_size=3000), max_size=8))
def test_save_and_resume_between_every_chunk(algorithm: str, chunks: list[bytes]) -> None:
    hasher = new_resumable(algorithm)
    for chunk in chunks:
        state = hasher.state()
        assert state is not None, "libcrypto is expected on the machines Moorage supports"
        resumed = resume(algorithm, state)
        assert resumed is not None
        hasher = resumed
        hasher.update(chunk)
    assert hasher.hexdigest() == hashlib.new(algorithm, b"".join(chunks)).hexdigest()


def test_hexdigest_does_not_finish_the_running_state() -> None:
    hasher = new_resumable("sha256")
    hasher.update(b"abc")
    first = hasher.hexdigest()
    hasher.update(b"def")
    assert first == hashlib.sha256(b"abc").hexdigest()
    assert hasher.hexdigest() == hashlib.sha256(b"abcdef").hexdigest()


@pytest.mark.parametrize(
    "state",
    [b"", b"garbage", b"\x00\x05hello" + bytes(112)],
    ids=["empty", "garbage", "foreign-tag"],
)
def test_untrusted_states_are_refused(state: bytes) -> None:
    assert resume("sha256", state) is None


def test_a_state_of_one_algorithm_does_not_resume_another() -> None:
    state = new_resumable("sha256").state()
    assert state is not None
    assert resume("sha512", state) is None
