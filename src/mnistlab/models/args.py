"""What a model's arguments may be: one `Arg` per argument, declared in the model's registry
entry (zoo.py) and checked once, where the arguments come in (`check_model_args`: a recipe being
loaded, a checkpoint's metadata being read). The models' constructors trust their arguments.

Arguments are recorded in checkpoints as JSON, so they are plain ints, floats and lists of ints,
and a bad one is the user's mistake (a recipe) or a damaged or hostile file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mnistlab.errors import MnistlabError, brief


@dataclass(frozen=True)
class Arg:
    """One argument: a number in [low, high] (high excluded where `open_high`), one of
    `choices`, or (kind `list`) a list of `length` integers in [low, high]."""

    kind: type  # int, float (an int is taken too) or list (of ints)
    low: int | float = 0
    high: int | float = 0
    open_high: bool = False
    choices: tuple[int, ...] = ()  # the only values allowed, where not the whole range is
    length: tuple[int, int] = (1, 1)  # a list's fewest and most items
    what: str = "a number"  # a float's noun in the error ("a drop probability")
    note: str = ""  # what an integer counts, after its range ("pixels from each side")

    def expected(self) -> str:
        """What the value must be, as an error message says it."""
        if self.choices:
            *rest, last = self.choices
            return f"{', '.join(map(str, rest))} or {last}"
        if self.kind is float:
            return f"{self.what} in [{self.low}, {self.high}{')' if self.open_high else ']'}"
        ints = f"from {self.low} to {self.high}" + (f" ({self.note})" if self.note else "")
        if self.kind is list:
            fewest, most = self.length
            count = fewest if fewest == most else f"{fewest} to {most}"
            return f"a list of {count} integers {ints}"
        return f"an integer {ints}"

    def check(self, key: str, value: Any) -> Any:
        """`value` as the model takes it (a float for a float, a list for a list), or a
        MnistlabError naming `key` and what it must be."""
        if self.kind is list:
            ok = (isinstance(value, (list, tuple)) and self.length[0] <= len(value) <= self.length[1]
                  and all(self._fits(item) for item in value))
        else:
            ok = self._fits(value)
        if not ok:
            raise MnistlabError(f"{key} must be {self.expected()}, got {brief(value)}")
        return list(value) if self.kind is list else self.kind(value)

    def _fits(self, value: Any) -> bool:
        kinds = (int, float) if self.kind is float else int
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        if self.choices:
            return value in self.choices
        # NaN fails both comparisons
        return self.low <= value and (value < self.high if self.open_high else value <= self.high)
