"""The one exception type for mistakes a user can make.

Anything raised as `MnistlabError` reaches the user as a single line on stderr and a non-zero
exit status (see `mnistlab.cli`); everything else is a bug and keeps its traceback.
"""

import difflib
import math
import reprlib
from collections.abc import Iterable
from typing import Any

# integers longer than this are shown by their length: a 400-digit number is no message, and
# Python refuses to print one of more than 4,300 digits at all
MAX_SHOWN_DIGITS = 24


class MnistlabError(Exception):
    """A problem the user can fix: a missing or corrupt file, a bad recipe, a bad argument."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """" (did you mean 'fast'?)" when `name` is a near miss of one of `choices`, else ""."""
    close = difflib.get_close_matches(name.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_flag(name: str, value: Any) -> bool:
    """`value` if it is True or False; anything else (a string "no" is true) is refused."""
    if not isinstance(value, bool):
        raise MnistlabError(f"{name}: expected True or False, got {brief(value)}")
    return value


def brief(value: Any) -> str:
    """`value` as a message shows what it got: a whole number with thousands separators (or,
    past MAX_SHOWN_DIGITS digits, its length), anything else as a repr cut short."""
    if isinstance(value, int) and not isinstance(value, bool) and \
            _digits(abs(value)) <= MAX_SHOWN_DIGITS:
        return f"{value:,}"
    return _SHORT.repr(value)


class _Brief(reprlib.Repr):
    """reprlib's short reprs, with integers in them (a list's items too) never written out
    past MAX_SHOWN_DIGITS digits: reprlib writes them whole before cutting them short."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 40

    def repr_int(self, x: int, level: int) -> str:
        digits = _digits(abs(x))
        if digits <= MAX_SHOWN_DIGITS:
            return repr(x)
        return f"a {'negative ' if x < 0 else ''}whole number of {digits:,} digits"


_SHORT = _Brief()


def _digits(n: int) -> int:
    """How many decimal digits `n` >= 0 has, without writing it out: log10 to within one,
    then corrected exactly."""
    if n == 0:
        return 1
    digits = int(math.log10(n)) + 1
    if 10 ** (digits - 1) > n:
        return digits - 1
    return digits + 1 if 10**digits <= n else digits
