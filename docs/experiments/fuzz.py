"""Fuzz every reader of untrusted input with Hypothesis, thousands of cases each, and tally.

    python docs/experiments/fuzz.py [--cases 3000] [--seed 0] [--targets idx recipe ...]

The targets and their strategies are in tests/fuzzing.py (tests/test_fuzz.py runs the same ones
with fewer cases). For each target prints the cases tried, how many were accepted and how many
refused with the module's documented error, the slowest case, and the bugs: any other exception,
or a result that breaks its promise, grouped by type and place, with one example each. Exits 1
when there is a bug.
"""

import argparse
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from fuzzing import TARGETS, Target  # noqa: E402


def where(e: BaseException) -> str:
    """The innermost frame in mnistlab or the fuzz targets: where the bug shows."""
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if "mnistlab" in f.filename or "fuzzing" in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(e.__traceback__)[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


def fuzz(target: Target, cases: int, seed_value: int) -> tuple[Counter, dict[str, str], float]:
    counts: Counter = Counter()
    bugs: dict[str, str] = {}
    slowest = 0.0

    @seed(seed_value)
    @settings(max_examples=cases, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(target.strategy())
    def run(case):
        nonlocal slowest
        counts["cases"] += 1
        start = time.perf_counter()
        try:
            target.check(case)
            counts["accepted"] += 1
        except target.allowed:
            counts["refused"] += 1
        except Exception as e:  # a bug: counted, and the fuzzing goes on
            counts["bugs"] += 1
            key = f"{type(e).__name__} at {where(e)}"
            bugs.setdefault(key, f"{str(e)[:160]!r} on {repr(case)[:200]}")
        slowest = max(slowest, time.perf_counter() - start)

    run()
    return counts, bugs, slowest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=3000, help="cases per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", nargs="+", choices=[t.name for t in TARGETS])
    args = parser.parse_args()
    print(f"{args.cases:,} cases per target, seed {args.seed}")
    print("| target | cases | accepted | refused (documented error) | bugs | slowest case | time |")
    print("|---|---|---|---|---|---|---|")
    found = {}
    for target in TARGETS:
        if args.targets and target.name not in args.targets:
            continue
        start = time.perf_counter()
        counts, bugs, slowest = fuzz(target, args.cases, args.seed)
        print(f"| {target.name} | {counts['cases']:,} | {counts['accepted']:,} | "
              f"{counts['refused']:,} ({target.allowed.__name__}) | {counts['bugs']:,} | "
              f"{slowest * 1000:.0f} ms | {time.perf_counter() - start:.0f} s |", flush=True)
        found.update({f"{target.name}: {k}": v for k, v in bugs.items()})
    for key, example in found.items():
        print(f"BUG {key}\n    {example}")
    print(f"{len(found)} distinct bugs" if found else "no bugs: every refusal was a documented error")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
