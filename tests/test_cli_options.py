"""The options that several `mnistlab` commands take: the same words, the same checks everywhere."""

import argparse
import os

import pytest

from mnistlab.cli import COMMANDS, build_parser, main

NAMES = [name for name, *_ in COMMANDS]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def option(p: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in p._actions if flag in a.option_strings), None)


def test_the_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    listing = capsys.readouterr().out
    for name, *_, what in COMMANDS:
        assert f"    {name}" in listing and what.split()[0] in listing


@pytest.mark.parametrize("name", NAMES)
def test_every_command_has_a_help_that_says_what_it_does(capsys, name):
    with pytest.raises(SystemExit) as done:
        main([name, "--help"])
    assert done.value.code == 0
    page = capsys.readouterr().out
    what = next(what for n, *_, what in COMMANDS if n == name)
    assert page.startswith(f"usage: mnistlab {name} ")
    assert " ".join(what.split()) in " ".join(page.split())  # the description, rewrapped


# flag -> the commands that take it; each takes it with the same help, default, type and choices
SHARED = {
    "--device": {"train", "reproduce", "bench", "evaluate", "ensemble", "report"},
    "--data-dir": {"train", "evaluate", "ensemble", "report"},  # and `datasets`, meaning its own
    "--quiet": {"train", "reproduce"},
    "--no-report": {"train", "reproduce"},
    "--compile": {"train", "bench"},
}
# `predict` and `serve` both take --model, --backend and --top-k, but differently on purpose:
# serve takes several models, runs ONNX Runtime by default, and lists up to a model's classes


@pytest.mark.parametrize("flag", SHARED)
def test_a_shared_option_is_the_same_in_every_command(flag):
    parsers = subparsers()
    takers = {name for name, p in parsers.items() if option(p, flag)} - {"datasets"}
    assert takers == SHARED[flag]
    seen = {repr((a.help, a.default, a.type, a.choices, a.metavar, a.nargs))
            for a in (option(parsers[name], flag) for name in takers)}
    assert len(seen) == 1, seen


def test_the_json_option_prints_and_where_a_file_is_named_writes_it():
    parsers = subparsers()
    flags = {name: option(p, "--json") for name, p in parsers.items() if option(p, "--json")}
    printing = {name for name, a in flags.items() if isinstance(a, argparse._StoreTrueAction)}
    assert printing == {"evaluate", "ensemble", "predict"}
    # bench's and loadtest's print too without a file (they required one)
    to_file = {name: a for name, a in flags.items() if a.metavar == "FILE.json"}
    assert to_file.keys() == {"bench", "loadtest"} and {a.nargs for a in to_file.values()} == {"?"}
    assert len({a.help for a in flags.values()}) == 2


# what each command that takes --device needs besides, so that the device is the only thing wrong
DEVICE_COMMANDS = {
    "train": ["--steps", "1"],
    "reproduce": ["--steps", "1", "--out", "out"],
    "bench": ["--seeds", "1"],
    "evaluate": ["default"],
    "ensemble": ["default", "keras-cnn"],
    "report": ["default", "--out", "out"],
}


def test_every_command_that_runs_a_model_is_listed_here():
    assert set(DEVICE_COMMANDS) == SHARED["--device"]


@pytest.mark.parametrize("name", DEVICE_COMMANDS)
def test_a_wrong_device_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    assert main([name, *DEVICE_COMMANDS[name], "--device", "tpu"]) == 1
    out, err = capsys.readouterr()
    assert err == "mnistlab: error: --device tpu: expected auto, cpu, cuda, mps, xpu, hpu or mtia\n"
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # no run, report or output folder begun


@pytest.mark.parametrize("args, message", [
    (["train", "--seeds", "0"], "argument --seeds: expected a whole number of at least 1, got 0"),
    (["reproduce", "--seeds", "x"], "argument --seeds: expected a whole number, got 'x'"),
    (["bench", "--seeds", "-1"], "argument --seeds: expected a whole number of at least 1, got -1"),
    (["predict", "a.png", "--top-k", "11"], "argument --top-k: invalid choice: 11"),
    (["serve", "--top-k", "0"], "argument --top-k: expected a whole number of at least 1, got 0"),
    (["serve", "--backend", "tf"], "argument --backend: invalid choice: 'tf'"),
    (["evaluate", "default", "--split", "dev"], "argument --split: invalid choice: 'dev'"),
    (["train", "--epochs", "1", "--steps", "1"], "argument --steps: not allowed with argument --epochs"),
    (["train", "--steps", "10000001"],
     "argument --steps: expected a whole number of at least 1, at most 10,000,000, got 10000001"),
    (["train", "--epochs", "10001"],
     "argument --epochs: expected a whole number of at least 1, at most 10,000, got 10001"),
    (["reproduce", "--steps", "0"],
     "argument --steps: expected a whole number of at least 1, at most 10,000,000, got 0"),
    (["evaluate"], "the following arguments are required: CHECKPOINT"),
])
def test_a_bad_option_value_ends_in_one_error_line(capsys, args, message):
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: mnistlab {args[0]} ")
    last = err.splitlines()[-1]
    assert last.startswith(f"mnistlab {args[0]}: error: {message}")
    assert err.endswith("\n") and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--workers", "100000"], "workers must be from 1 to {most} (4 per CPU of this machine), "
                              "got 100,000"),
    (["--threads", "1000000000"], "threads must be from 1 to {most} (4 per CPU of this machine), "
                                  "got 1,000,000,000"),
    (["--top-k", "11"], "top_k must be from 1 to 10 (the classes the model served read), got 11"),
    (["--model", "default", "--model", "keras-cnn", "--top-k", "12"],
     "top_k must be from 1 to 10 (the classes the models served read), got 12"),
])
def test_serve_refuses_what_it_cannot_use_before_it_starts(capsys, args, message):
    # an address no socket binds: had the check let it through, this is the error instead
    assert main(["serve", "--host", "256.0.0.1", *args]) == 1
    most = 4 * (os.cpu_count() or 1)
    assert capsys.readouterr().err == f"mnistlab: error: {message.format(most=most)}\n"
