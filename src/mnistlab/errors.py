"""The one exception type for mistakes a user can make.

Anything raised as `MnistlabError` reaches the user as a single line on stderr and a non-zero
exit status (see `mnistlab.cli`); everything else is a bug and keeps its traceback.
"""


class MnistlabError(Exception):
    """A problem the user can fix: a missing or corrupt file, a bad recipe, a bad argument."""
