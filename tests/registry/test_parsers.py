"""Property tests for the pure parsers: names, tags, references, digests, ranges, Accept."""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from moorage.domain.digest import Digest
from moorage.domain.errors import ErrorCode, RegistryError
from moorage.domain.names import (
    Reference,
    is_valid_tag,
    project_of,
    referrers_tag,
    validate_repository_name,
    validate_tag,
)
from moorage.domain.negotiation import is_acceptable, parse_accept
from moorage.domain.ranges import ByteRange, RangeError, parse_chunk_range, parse_range

LOWER_ALNUM = string.ascii_lowercase + string.digits
TAG_FIRST = string.ascii_letters + string.digits + "_"
TAG_REST = TAG_FIRST + ".-"
# The boundaries come from the specifications, not from the code under test.
# OCI image spec, descriptor digests: the registered algorithms and their hex lengths.
HEX_LENGTH = {"sha256": 64, "sha512": 128}
# Distribution's reference grammar: a repository name is at most 255 characters.
MAX_NAME_LENGTH = 255
ALGORITHMS = sorted(HEX_LENGTH)

# -- strategies

alnum_runs = st.text(alphabet=LOWER_ALNUM, min_size=1, max_size=6)
separators = st.sampled_from([".", "_", "__", "-", "--", "---"])


@st.composite
def components(draw: st.DrawFn) -> str:
    parts = [draw(alnum_runs)]
    for _ in range(draw(st.integers(0, 3))):
        parts += [draw(separators), draw(alnum_runs)]
    return "".join(parts)


names = st.lists(components(), min_size=1, max_size=6).map("/".join)
short_names = names.filter(lambda name: len(name) <= MAX_NAME_LENGTH)
tags = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(TAG_FIRST),
    st.text(alphabet=TAG_REST, max_size=127),
)
digests = st.builds(
    lambda data, algorithm: Digest.of(data, algorithm), st.binary(), st.sampled_from(ALGORITHMS)
)
media_types = st.from_regex(r"[a-z][a-z0-9.+-]{0,20}/[a-z][a-z0-9.+-]{0,30}", fullmatch=True)


def error_code(call: object, *args: object) -> ErrorCode | None:
    """The RegistryError code `call(*args)` raises, or None when it returns."""
    assert callable(call)
    try:
        call(*args)
    except RegistryError as error:
        return error.code
    return None


def is_name_by_spec(name: str) -> bool:
    """An independent reading of the spec's name grammar, component by component."""
    if not name or len(name) > MAX_NAME_LENGTH:
        return False
    for component in name.split("/"):
        if not component or component[0] not in LOWER_ALNUM or component[-1] not in LOWER_ALNUM:
            return False
        if any(c not in LOWER_ALNUM + "._-" for c in component):
            return False
        # Separators: ".", "_", "__" or runs of "-"; never mixed, never longer.
        for run in _separator_runs(component):
            if run not in (".", "_", "__") and set(run) != {"-"}:
                return False
    return True


def _separator_runs(component: str) -> list[str]:
    runs, current = [], ""
    for c in component:
        if c in LOWER_ALNUM:
            if current:
                runs.append(current)
            current = ""
        else:
            current += c
    return runs


# -- names


@given(short_names)
def test_valid_names_are_accepted_unchanged(name: str) -> None:
    assert validate_repository_name(name) == name
    assert project_of(name) == name.split("/")[0]


@given(names, st.integers(0, 200))
def test_names_longer_than_255_are_refused(name: str, excess: int) -> None:
    # Grammatically fine, only too long.
    long_name = f"{name}/" + "a" * max(1, MAX_NAME_LENGTH + excess - len(name))
    assert len(long_name) > MAX_NAME_LENGTH
    assert error_code(validate_repository_name, long_name) is ErrorCode.NAME_INVALID


@given(short_names, st.data())
def test_a_forbidden_character_anywhere_is_refused(name: str, data: st.DataObject) -> None:
    bad = data.draw(st.characters().filter(lambda c: c not in LOWER_ALNUM + "._-/"))
    position = data.draw(st.integers(0, len(name)))
    mutated = name[:position] + bad + name[position:]
    assert error_code(validate_repository_name, mutated) is ErrorCode.NAME_INVALID


@given(short_names, st.sampled_from(["/", "//", ".", "..", "-", "_", "___", "._", "-.", "/."]))
def test_misplaced_separators_are_refused(name: str, separator: str) -> None:
    for mutated in (separator + name, name + separator):
        assert error_code(validate_repository_name, mutated) is ErrorCode.NAME_INVALID
    middle = name + separator + "x" if separator in ("//", "___", "._", "-.", "/.") else None
    if middle is not None:
        assert error_code(validate_repository_name, middle) is ErrorCode.NAME_INVALID


@given(st.text(alphabet=LOWER_ALNUM + "._-/A%", max_size=40))
@example("a/b")
@example("a__b")
@example("a___b")
@example("a-.b")
def test_name_validation_agrees_with_the_grammar(text: str) -> None:
    expected = is_name_by_spec(text)
    assert (error_code(validate_repository_name, text) is None) == expected


@given(st.text(max_size=300))
def test_name_validation_only_ever_raises_name_invalid(text: str) -> None:
    assert error_code(validate_repository_name, text) in (None, ErrorCode.NAME_INVALID)


# -- tags and references


@given(tags)
def test_valid_tags_are_accepted(tag: str) -> None:
    assert is_valid_tag(tag)
    assert validate_tag(tag) == tag
    assert Reference.parse(tag) == Reference(tag=tag)
    assert str(Reference.parse(tag)) == tag


@given(st.text(max_size=140))
def test_tag_validation_agrees_with_the_grammar(text: str) -> None:
    expected = (
        1 <= len(text) <= 128 and text[0] in TAG_FIRST and all(c in TAG_REST for c in text[1:])
    )
    assert is_valid_tag(text) == expected
    assert error_code(validate_tag, text) is (None if expected else ErrorCode.MANIFEST_INVALID)


@given(digests)
def test_digest_references_parse_as_digests(digest: Digest) -> None:
    reference = Reference.parse(str(digest))
    assert reference == Reference(digest=digest)
    assert str(reference) == str(digest)


@given(st.text(max_size=200))
def test_reference_parsing_raises_only_protocol_errors(text: str) -> None:
    code = error_code(Reference.parse, text)
    if ":" in text:
        assert code in (None, ErrorCode.DIGEST_INVALID)
    else:
        assert code is (None if is_valid_tag(text) else ErrorCode.MANIFEST_INVALID)


@given(digests)
def test_referrers_tag_is_a_valid_tag_derived_from_the_digest(digest: Digest) -> None:
    tag = referrers_tag(digest)
    assert is_valid_tag(tag)
    assert tag == f"{digest.algorithm}-{digest.hex[:64]}"


# -- digests


@given(st.binary(max_size=4096), st.sampled_from(ALGORITHMS))
def test_digest_of_round_trips_through_parse(data: bytes, algorithm: str) -> None:
    digest = Digest.of(data, algorithm)
    assert str(digest) == f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
    assert Digest.parse(str(digest)) == digest
    assert len(digest.hex) == HEX_LENGTH[algorithm]


@given(st.lists(st.binary(max_size=512), max_size=8), st.sampled_from(ALGORITHMS))
def test_incremental_hashing_matches_one_shot(chunks: list[bytes], algorithm: str) -> None:
    digest = Digest.of(b"".join(chunks), algorithm)
    hasher = digest.hasher()
    for chunk in chunks:
        hasher.update(chunk)
    assert hasher.hexdigest() == digest.hex


@given(st.text(max_size=200))
@example("sha256:" + "a" * 64)
@example("sha512:" + "b" * 128)
def test_parse_accepts_exactly_lowercase_hex_of_the_right_length(text: str) -> None:
    algorithm, _, hex_part = text.partition(":")
    expected = (
        algorithm in HEX_LENGTH
        and len(hex_part) == HEX_LENGTH[algorithm]
        and all(c in "0123456789abcdef" for c in hex_part)
    )
    code = error_code(Digest.parse, text)
    assert code is (None if expected else ErrorCode.DIGEST_INVALID)
    if expected:
        assert str(Digest.parse(text)) == text


@given(digests, st.data())
def test_damaged_digests_are_refused(digest: Digest, data: st.DataObject) -> None:
    damaged = data.draw(
        st.sampled_from(
            [
                f"{digest.algorithm}:{digest.hex[:-1]}",
                f"{digest.algorithm}:{digest.hex}0",
                f"{digest.algorithm}:{digest.hex.upper()}",
                f"{digest.algorithm.upper()}:{digest.hex}",
                f"md5:{digest.hex}",
                f"{digest.algorithm}:{digest.hex[:-1]}g",
                f"{digest.algorithm}{digest.hex}",
                f" {digest}",
            ]
        )
    )
    assume(damaged != str(digest))
    assert error_code(Digest.parse, damaged) is ErrorCode.DIGEST_INVALID


# -- chunk ranges (Content-Range on uploads)

offsets = st.integers(0, 10**18)


@given(offsets, st.integers(0, 10**18), st.sampled_from(["", "bytes ", "bytes="]), st.data())
def test_chunk_ranges_parse_in_every_accepted_form(
    start: int, length: int, unit: str, data: st.DataObject
) -> None:
    end = start + length
    total = data.draw(st.sampled_from(["", "/*", f"/{end + 1}"]))
    parsed = parse_chunk_range(f"{unit}{start}-{end}{total}")
    assert parsed == ByteRange(start, end)
    assert parsed.length == length + 1


@given(offsets, st.integers(1, 10**6))
def test_chunk_range_ending_before_it_starts_is_refused(end: int, gap: int) -> None:
    with pytest.raises(RangeError):
        parse_chunk_range(f"{end + gap}-{end}")


@given(st.text(max_size=60))
@example("")
@example("0-")
@example("-1")
@example("1-2-3")
def test_chunk_range_parsing_yields_a_range_or_range_error(text: str) -> None:
    try:
        parsed = parse_chunk_range(text)
    except RangeError:
        return
    assert 0 <= parsed.start <= parsed.end
    assert str(parsed.start) in text
    assert str(parsed.end) in text


# -- download ranges (Range on blob GET)

sizes = st.integers(0, 10**12)


@given(st.integers(0, 10**12), st.integers(0, 10**12), sizes)
def test_closed_range_is_clamped_to_the_blob(first: int, last: int, size: int) -> None:
    value = f"bytes={first}-{last}"
    if last < first:
        assert parse_range(value, size) is None
    elif first >= size:
        with pytest.raises(RangeError):
            parse_range(value, size)
    else:
        assert parse_range(value, size) == ByteRange(first, min(last, size - 1))


@given(st.integers(0, 10**12), sizes)
def test_open_ended_range_runs_to_the_end(first: int, size: int) -> None:
    if first >= size:
        with pytest.raises(RangeError):
            parse_range(f"bytes={first}-", size)
    else:
        assert parse_range(f"bytes={first}-", size) == ByteRange(first, size - 1)


@given(st.integers(0, 10**12), sizes)
def test_suffix_range_takes_the_last_bytes(suffix: int, size: int) -> None:
    if suffix == 0 or size == 0:
        with pytest.raises(RangeError):
            parse_range(f"bytes=-{suffix}", size)
    else:
        assert parse_range(f"bytes=-{suffix}", size) == ByteRange(max(0, size - suffix), size - 1)


@given(st.text(max_size=60), sizes)
@example("bytes=0-1,3-4", 10)
@example("bytes=-", 10)
@example("items=0-1", 10)
def test_any_range_header_is_ignored_satisfied_or_unsatisfiable(text: str, size: int) -> None:
    try:
        parsed = parse_range(text, size)
    except RangeError:
        return
    if parsed is not None:
        assert 0 <= parsed.start <= parsed.end < size
        assert parsed.length <= size


# -- Accept negotiation


@given(st.lists(media_types, min_size=1, max_size=5), st.data())
def test_accept_lists_every_type_without_parameters(types: list[str], data: st.DataObject) -> None:
    parameter = data.draw(st.sampled_from(["", ";q=0.9", " ; charset=utf-8", ";q=0"]))
    header = ", ".join(f"{media_type.upper()}{parameter}" for media_type in types)
    assert parse_accept([header]) == frozenset(types)
    # Several header lines mean the same as one comma-separated line.
    assert parse_accept(types) == frozenset(types)


@given(st.lists(media_types, max_size=5), st.sampled_from(["*/*", "application/*"]), st.data())
def test_a_wildcard_accepts_anything(types: list[str], wildcard: str, data: st.DataObject) -> None:
    position = data.draw(st.integers(0, len(types)))
    listed = [*types[:position], f"{wildcard};q=0.1", *types[position:]]
    assert parse_accept([", ".join(listed)]) is None
    assert is_acceptable("application/vnd.anything+json", parse_accept(listed))


@given(st.lists(st.sampled_from(["", " ", ",", " , ", ";q=1"]), max_size=4))
def test_an_empty_accept_accepts_anything(values: list[str]) -> None:
    assert parse_accept(values) is None


@given(media_types, st.lists(media_types, max_size=5))
def test_is_acceptable_is_membership(media_type: str, types: list[str]) -> None:
    accepted = parse_accept(types)
    assert is_acceptable(media_type, accepted) == (accepted is None or media_type in types)
    assert is_acceptable(media_type, None)


@given(st.text(max_size=100))
def test_accept_parsing_never_fails(text: str) -> None:
    accepted = parse_accept([text])
    assert accepted is None or all(item == item.strip().lower() for item in accepted)
