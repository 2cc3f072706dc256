"""What a training process's main thread does while its other OpenMP thread waits, from perf.

    .venv/bin/python docs/experiments/tutorial_speed.py --mnistlab-side opengenus-cnn --steps 400 &
    sleep 7; perf record -q -g -p $! -o /tmp/step.data -- sleep 5
    perf script -i /tmp/step.data -F tid,time,ip,sym,dso > /tmp/samples.txt
    python docs/experiments/thread_wait.py /tmp/samples.txt --step-ms 29.4

On two cores PyTorch runs each parallel operator on two threads. Whenever the second waits in
libgomp, the first is alone: in an operator whose work the two split unevenly, or in host code
that no thread shares (Python, PyTorch's dispatch and autograd, malloc, single-threaded
operators). Each of the waiting thread's samples is matched with the main thread's nearest
sample in time, and the main thread's samples are sorted into those kinds. `--step-ms`, the
recipe's step time, turns the counts into milliseconds a step.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import re

HEADER = re.compile(r"\s*(\d+)\s+([\d.]+):\s*$")  # "tid time:" opens a sample
FRAME = re.compile(r"\s+\S+\s+(.*)\((.*)\)\s*$")  # "ip symbol (dso)", innermost first


def read_samples(path: str) -> list[tuple[int, float, str, str]]:
    """(thread id, time, innermost symbol, its library) of each sample with a call chain."""
    samples, current = [], None
    with open(path) as lines:
        for line in lines:
            if header := HEADER.match(line):
                current = [int(header[1]), float(header[2])]
            elif current is not None and (frame := FRAME.match(line)):
                samples.append((*current, frame[1].strip(), frame[2].rsplit("/", 1)[-1]))
                current = None  # only the innermost frame
    return samples


def kind(symbol: str, library: str) -> str:
    if "libgomp" in library:
        return "waiting too"
    if library.startswith("perf-"):  # oneDNN's JIT kernels, named in perf's map file
        return "oneDNN kernels (work split unevenly)"
    if "libpython" in library:
        return "Python"
    if "libtorch_python" in library:
        return "PyTorch's Python bindings"
    if library.startswith("libc.so"):
        return "malloc, free and memcpy"
    if "libtorch_cpu" in library:
        if symbol.startswith("mkl_") or "random" in symbol or "function_ref" in symbol:
            return "single-threaded operators (MKL, random draws, TensorIterator loops)"
        if "adam" in symbol:
            return "Adam"
        if "dnnl" in symbol:
            return "oneDNN's host code"
        return "PyTorch's dispatch, autograd and the rest"
    return library


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("samples", help="the output of perf script -F tid,time,ip,sym,dso")
    parser.add_argument("--step-ms", type=float, required=True, help="the recipe's step time")
    args = parser.parse_args()
    samples = read_samples(args.samples)
    python_samples = collections.Counter(s[0] for s in samples if "libpython" in s[3])
    main_thread = python_samples.most_common(1)[0][0]
    others = collections.Counter(s[0] for s in samples if s[0] != main_thread)
    other_thread = others.most_common(1)[0][0]
    main = [s for s in samples if s[0] == main_thread]
    times = [s[1] for s in main]
    waits = [s for s in samples if s[0] == other_thread and "libgomp" in s[3]]
    kinds = collections.Counter()
    for _, when, _, _ in waits:
        i = bisect.bisect_left(times, when)
        nearest = min((main[j] for j in (i - 1, i) if 0 <= j < len(main)),
                      key=lambda s: abs(s[1] - when))
        kinds[kind(nearest[2], nearest[3])] += 1
    span = samples[-1][1] - samples[0][1]
    steps = span * 1e3 / args.step_ms
    per_sample_ms = span * 1e3 / others[other_thread]
    print(f"the other thread waited in {len(waits):,} of its {others[other_thread]:,} samples "
          f"({100 * len(waits) / others[other_thread]:.0f}%), over {span:.1f} s (about "
          f"{steps:.0f} steps); meanwhile the main thread was in:")
    for name, count in kinds.most_common():
        print(f"{count:7,} {100 * count / len(waits):5.1f}%  {count * per_sample_ms / steps:6.3f} "
              f"ms a step  {name}")


if __name__ == "__main__":
    main()
