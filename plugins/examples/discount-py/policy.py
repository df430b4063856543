"""The decision of the discount plugin, in plain Python so that it can be tested anywhere.

A piece of a lease costs its list price (the server's rate card, the
preemptible discount included), less

- half on weekends (Saturday and Sunday, UTC): a piece never spans two UTC
  hours, so it is all weekend or not at all;
- the percentage a job's `discount` tag names (`discount=15`), 0 to 100.

The arithmetic is exact (`fractions.Fraction`) and rounded once, at the end,
to a whole minor unit, half to even: `round()` of a Fraction does exactly
that. A malformed `discount` tag is an error: the piece is then charged its
list price, and the error is recorded against the plugin.
"""

from fractions import Fraction
from typing import Mapping

#: What a weekend piece costs, as a part of the list price.
WEEKEND = Fraction(1, 2)
#: The tag a job names its discount with, in whole percent.
DISCOUNT_TAG = "discount"

MS_PER_DAY = 24 * 60 * 60 * 1000


def is_weekend(start_ms: int) -> bool:
    """Whether `start_ms` (milliseconds since the Unix epoch) falls on a UTC weekend."""
    # 1970-01-01 was a Thursday: day 0 is weekday 3 (Monday is 0).
    weekday = (start_ms // MS_PER_DAY + 3) % 7
    return weekday >= 5


def price(list_price_minor: int, start_ms: int, tags: Mapping[str, str]) -> int:
    """The piece's price in minor units; ValueError for a malformed discount tag."""
    p = Fraction(list_price_minor)
    if is_weekend(start_ms):
        p *= WEEKEND
    tag = tags.get(DISCOUNT_TAG)
    if tag is not None:
        if not (tag.isdigit() and 0 <= int(tag) <= 100):
            raise ValueError(f"{DISCOUNT_TAG} tag {tag!r}: expected a whole percent, 0 to 100")
        p *= Fraction(100 - int(tag), 100)
    return round(p)
