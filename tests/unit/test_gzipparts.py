"""A gzip body stitched from separately deflated parts decodes to the joined parts, with any decoder,
and a part given again as the same object is not deflated again."""

from __future__ import annotations

import gzip
import os
import random
import subprocess
import zlib

import pytest

from poolwatch.gzipparts import GzipParts


def some_parts() -> list[bytes]:
    rng = random.Random(7)
    lines = [f'poolwatch_up{{target="db{i:03d}"}} {rng.random()!r}\n'.encode() for i in range(3000)]
    return [
        b"# HELP poolwatch_up 1 if the last probe succeeded.\n# TYPE poolwatch_up gauge\n",
        b"".join(lines),
        b"",  # a collector with nothing to say
        os.urandom(70_000),  # incompressible: stored blocks
        b"a",
        b"x" * 200_000,  # longer than the 32 KB window
    ]


def test_decodes_to_the_joined_parts():
    parts = some_parts()
    body = GzipParts().compress(parts)
    assert gzip.decompress(body) == b"".join(parts)
    assert zlib.decompress(body, wbits=31) == b"".join(parts)  # one member, checked CRC and length


def test_the_gzip_program_reads_it():
    parts = some_parts()
    decoded = subprocess.run(
        ["gzip", "-dc"], input=GzipParts().compress(parts), capture_output=True, check=True
    ).stdout
    assert decoded == b"".join(parts)


def test_no_parts_is_an_empty_body():
    assert gzip.decompress(GzipParts().compress([])) == b""
    assert gzip.decompress(GzipParts().compress([b"", b""])) == b""


def test_a_part_given_again_is_not_deflated_again_and_a_dropped_one_is_forgotten():
    kept, changed, dropped = b"kept " * 1000, b"changed " * 1000, b"dropped " * 1000
    parts = GzipParts()
    parts.compress([kept, changed, dropped])
    deflated = parts._deflated[id(kept)][1]
    replacement = b"changed again " * 1000
    body = parts.compress([kept, replacement])
    assert gzip.decompress(body) == kept + replacement
    assert parts._deflated[id(kept)][1] is deflated
    assert {id(kept), id(replacement)} == set(parts._deflated)


@pytest.mark.parametrize("level", [1, 6, 9])
def test_takes_any_level(level):
    parts = some_parts()
    assert gzip.decompress(GzipParts(level=level).compress(parts)) == b"".join(parts)
