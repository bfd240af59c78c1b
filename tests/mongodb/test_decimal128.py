"""busflow's Decimal128 conversions give what bson's own give, bit for bit and digit for digit.

The values are random but seeded, so every run checks the same ones: signs, 1 to 34 digits
(and a few more, which Decimal128 rounds or refuses), exponents across Decimal128's range and
beyond it on both sides (clamped, subnormal, refused), and the special values.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal

from bson.decimal128 import Decimal128

from busflow.mongodb._decimal128 import from_decimal128, to_decimal128

RANDOM_VALUES = 200_000
RANDOM_ENCODINGS = 30_000
SPECIAL_VALUES = [
    "0",
    "-0",
    "0E-6176",
    "-0E-6176",
    "0E+6111",
    "0E-6200",  # clamped to 0E-6176
    "0E+6200",  # clamped to 0E+6111
    "NaN",
    "-NaN",
    "sNaN",
    "-sNaN",
    "NaN123",  # a payload: bson refuses it
    "Infinity",
    "-Infinity",
    "1E-6176",  # the smallest subnormal
    "1E-6177",  # inexact: refused
    "10E-6177",  # rounded to 1E-6176, exactly
    "1E+6111",
    "1E+6112",  # clamped: the coefficient padded with zeros
    "1E+6144",  # the largest exponent once clamped
    "1E+6145",  # overflow: refused
    "9" * 34 + "E+6111",  # the largest value
    "-" + "9" * 34 + "E-6176",
    "9" * 35,  # 35 digits: inexact, refused
    "1" + "0" * 34,  # 35 digits, rounded exactly to 34
    "0.1",
    "-12345.67",
    "1" + "0" * 33 + "E-6176",
]


def random_values(count: int, seed: int) -> Iterator[Decimal]:
    rng = random.Random(seed)
    for _ in range(count):
        digits = rng.randint(1, 34) if rng.random() < 0.95 else rng.randint(35, 40)
        coefficient = rng.randrange(10 ** (digits - 1), 10**digits)
        if rng.random() < 0.1:
            coefficient = 0
        exponent_kind = rng.random()
        if exponent_kind < 0.4:  # what str() writes positionally, as "-1234.50"
            exponent = -rng.randint(0, digits + 5)
        elif exponent_kind < 0.5:
            exponent = rng.randint(-10, 10)
        elif exponent_kind < 0.6:  # near the edges, inside and out
            exponent = rng.choice((-6176, 6111 - digits + 1, 6111)) + rng.randint(-40, 40)
        else:
            exponent = rng.randint(-6176 - 50, 6111 + 50)
        yield Decimal(f"{rng.choice('-+')}{coefficient}E{exponent}")


def random_encodings(count: int, seed: int) -> Iterator[Decimal128]:
    """Any 128 bits, some with the top bits of specials and of BID's second form set."""
    rng = random.Random(seed)
    for _ in range(count):
        bits = rng.getrandbits(128)
        kind = rng.random()
        if kind < 0.2:
            bits |= 3 << 125  # infinity, NaN or the second form
        elif kind < 0.6:  # a canonical coefficient, the exponent bits random
            bits = (bits & ~((1 << 113) - 1) & ~(3 << 125)) | rng.randrange(10**34)
        yield Decimal128.from_bid(bits.to_bytes(16, "little"))


def test_busflow_converts_every_value_as_bson_does_both_ways() -> None:
    values = [Decimal(text) for text in SPECIAL_VALUES]
    values += random_values(RANDOM_VALUES, seed=20240514)
    encodings: list[Decimal128] = []
    encoded_otherwise = []
    for value in values:
        try:
            encoding = Decimal128(value)
        except Exception as error:  # what bson refuses, busflow must refuse alike
            try:
                to_decimal128(value)
            except Exception as own_error:
                if type(own_error) is type(error):
                    continue
            encoded_otherwise.append(value)
            continue
        encodings.append(encoding)
        if to_decimal128(value).bid != encoding.bid:
            encoded_otherwise.append(value)
    encodings += random_encodings(RANDOM_ENCODINGS, seed=20240515)
    # repr shows the sign, every digit, the exponent and the kind of NaN
    decoded_otherwise = [
        encoding
        for encoding in encodings
        if repr(from_decimal128(encoding)) != repr(encoding.to_decimal())
    ]

    assert encoded_otherwise == []
    assert decoded_otherwise == []
    assert len(values) > RANDOM_VALUES
    assert len(encodings) > RANDOM_VALUES
