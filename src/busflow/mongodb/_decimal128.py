"""``Decimal`` to BSON's Decimal128 and back, giving the same results as bson, faster.

bson converts through a ``decimal`` context and digit by digit: about 4 to 20 µs a value, the
largest cost of saving and loading a state with many decimals. Here the common case, a finite
value of at most 34 digits with an exponent that Decimal128 holds as it is, is converted with
integer arithmetic on the two 64-bit words of its BID encoding. Every other value goes to
bson's own conversion: infinities, NaNs, values that Decimal128 would clamp or refuse, and
non-canonical encodings. So both give the same bits and the same ``Decimal`` for every value,
which tests/mongodb/test_decimal128.py checks against bson over hundreds of thousands of
values.
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Final

from bson.decimal128 import Decimal128

__all__ = ["from_decimal128", "to_decimal128"]

_MAX_DIGITS: Final = 34
_MAX_COEFFICIENT: Final = 10**_MAX_DIGITS - 1
_EXPONENT_BIAS: Final = 6176
_EXPONENT_MIN: Final = -6176
"""The smallest exponent Decimal128 keeps (``Etiny``); a smaller one is rounded or refused."""
_EXPONENT_MAX: Final = 6111
"""The largest one; a larger one is clamped, the coefficient padded with zeros, or refused."""
# BID keeps 128 bits as two 64-bit words, the low one first. In the high word: the sign in bit
# 63, then (in the first form, the only canonical one) 14 bits of exponent from bit 49, then
# the coefficient's top 49 bits.
_WORDS: Final = struct.Struct("<QQ")
_WORD_MASK: Final = (1 << 64) - 1
_SIGN_SHIFT: Final = 63
_EXPONENT_SHIFT: Final = 49
_EXPONENT_MASK: Final = 0x3FFF
_COEFFICIENT_HIGH_MASK: Final = (1 << _EXPONENT_SHIFT) - 1
_LARGE_FORM: Final = 3 << 61
"""Both bits set: an infinity, a NaN, or a coefficient in BID's second form, which is never
canonical (at least 2**113, more than 34 digits)."""


def to_decimal128(value: Decimal) -> Decimal128:
    """``Decimal128(value)``, as bson makes it."""
    if value.is_finite():
        # str() is the quickest way to a Decimal's digits and exponent: "-12.30", "1.5E+7".
        mantissa, _, exponent_text = str(value).upper().partition("E")
        point = mantissa.find(".")
        exponent = int(exponent_text or 0) - (0 if point < 0 else len(mantissa) - point - 1)
        coefficient = abs(int(mantissa.replace(".", "", 1)))
        if coefficient <= _MAX_COEFFICIENT and _EXPONENT_MIN <= exponent <= _EXPONENT_MAX:
            high = (
                ((mantissa[0] == "-") << _SIGN_SHIFT)
                | ((exponent + _EXPONENT_BIAS) << _EXPONENT_SHIFT)
                | (coefficient >> 64)
            )
            # bson documents (high word, low word) as a value, but leaves it out of its
            # annotation; it takes half the time of from_bid(bytes).
            return Decimal128((high, coefficient & _WORD_MASK))  # type: ignore[arg-type]
    return Decimal128(value)


def from_decimal128(value: Decimal128) -> Decimal:
    """``value.to_decimal()``, as bson makes it."""
    low, high = _WORDS.unpack(value.bid)
    coefficient = (
        (high & _COEFFICIENT_HIGH_MASK) << 64 | low if high & _COEFFICIENT_HIGH_MASK else low
    )
    if high & _LARGE_FORM == _LARGE_FORM or coefficient > _MAX_COEFFICIENT:
        return value.to_decimal()
    exponent = ((high >> _EXPONENT_SHIFT) & _EXPONENT_MASK) - _EXPONENT_BIAS
    # Decimal's constructor keeps a string's digits and exponent exactly, whatever the context.
    return Decimal(f"{'-' if high >> _SIGN_SHIFT else ''}{coefficient}E{exponent}")
