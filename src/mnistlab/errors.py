"""The one exception type for mistakes a user can make.

Anything raised as `MnistlabError` reaches the user as a single line on stderr and a non-zero
exit status (see `mnistlab.cli`); everything else is a bug and keeps its traceback.
"""

import difflib
from collections.abc import Iterable


class MnistlabError(Exception):
    """A problem the user can fix: a missing or corrupt file, a bad recipe, a bad argument."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """" (did you mean 'fast'?)" when `name` is a near miss of one of `choices`, else ""."""
    close = difflib.get_close_matches(name.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
