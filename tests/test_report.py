"""Reports: a tiny run's report.html and figures, opened in Debian's Chromium; compare; the
TensorBoard event files read back by TensorBoard's own reader; bad input as one error line."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

from mnistlab.checkpoint import MODEL_FILE, read_file, write_file
from mnistlab.cli import main
from mnistlab.recipebook import load_recipe
from mnistlab.recipebook.recipe import parse_recipe
from mnistlab.report import tensorboard as tb
from mnistlab.report.build import FIGURE_NAMES, recipe_toml, write_report
from mnistlab.report.compare import compare_runs, format_comparison
from mnistlab.report.run import ReportError
from mnistlab.training.engine import METRICS_FILE, Trainer
from mnistlab.training.progress import Progress

QUIET = dict(progress=Progress(1, quiet=True))
# the description is a user's text: the page must show it, never run it
EVIL = '<script>window.evil = 1</script><img src="https://example.com/x.png"> & "quotes"'
TINY = f"""
name = "tiny-run"
description = '{EVIL}'
[model]
name = "strided-cnn"
[optimizer]
name = "adam"
lr = 3e-3
[train]
batch_size = 100
epochs = 2
log_every = 5
"""
FIGURES = ["confusion.png", "curves.png", "first-layer.png", "mistakes.png",
           "per-class-accuracy.png"]

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "")
                 if p and Path(p).is_file()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_mnist):
    """Two tiny runs (2 epochs of 22 steps on 2,400 images, seeds 0 and 1), with live
    TensorBoard event files."""
    folder = tmp_path_factory.mktemp("runs")
    (folder / "tiny.toml").write_text(TINY)
    recipe = load_recipe(folder / "tiny.toml")
    out = []
    for seed in (0, 1):
        run_dir = folder / f"seed-{seed}"
        Trainer(recipe, run_dir, seed=seed, device="cpu", data_dir=str(small_mnist),
                on_log=tb.TensorBoardLogger(run_dir), **QUIET).run()
        out.append(run_dir)
    return out


@pytest.fixture(scope="module")
def report(runs):
    return write_report(runs[0], device="cpu")


def check_png(path: Path, min_width: int = 300) -> None:
    with Image.open(path) as image:
        image.verify()  # the chunks and their checksums
    with Image.open(path) as image:
        image.load()  # the pixels
        assert image.format == "PNG" and image.width >= min_width and image.height >= 100


def test_report_writes_the_page_and_valid_pngs(runs, report):
    assert report.page == runs[0] / "report.html" and report.page.stat().st_size > 20_000
    assert sorted(p.name for p in report.figures) == FIGURES
    for path in report.figures:
        check_png(path)
    m = report.analysis.metrics
    assert report.analysis.split == "test" and m.count == 600
    assert report.analysis.errors == m.count - sum(m.confusion[i][i] for i in range(10))
    confidences = [x.confidence for x in report.analysis.mistakes]
    assert confidences == sorted(confidences, reverse=True) and confidences
    # the same accuracy the run recorded at its end
    test = [json.loads(line) for line in (runs[0] / METRICS_FILE).read_text().splitlines()][-1]
    assert test["event"] == "test" and test["accuracy"] == pytest.approx(m.accuracy)
    assert report.seconds < 30


def test_recipe_toml_round_trips():
    for name in ("deep-mnist-as-printed", "keras-cnn", "best"):
        recipe = load_recipe(name)
        assert parse_recipe(recipe_toml(recipe.to_dict()), name).to_dict() == recipe.to_dict()


def test_figures_draw_names_as_written(tmp_path):
    # a `$` would start matplotlib's maths, and an unpaired one fail to parse
    from mnistlab.report import figures
    from mnistlab.report.run import Curves

    curves = Curves(train=[{"step": s, "loss": 1 / s, "accuracy": 0.5} for s in (1, 2)])
    for png in (figures.curves_png([("a$b", curves), ("$x", curves)]),
                figures.confusion_png([[3, 1], [0, 4]], ["$", "a$b"])):
        path = tmp_path / "figure.png"
        path.write_bytes(png)
        check_png(path)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("needs Debian's Chromium (/usr/bin/chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


def open_page(browser, path: Path):
    """The page from file://, with every request it makes and every error it logs."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests, problems = [], []
    page.on("request", lambda r: r.url.startswith(("data:", "file:")) or requests.append(r.url))
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.goto(path.resolve().as_uri(), wait_until="load")
    return page, requests, problems


def test_report_renders_in_chromium_with_its_figures(browser, report):
    page, requests, problems = open_page(browser, report.page)
    images = page.evaluate("""Array.from(document.images).map(i => ({
        file: i.dataset.file, complete: i.complete, width: i.naturalWidth,
        shown: i.getBoundingClientRect().width}))""")
    assert sorted(i["file"] for i in images) == FIGURES
    assert all(i["complete"] and i["width"] > 300 and i["shown"] > 100 for i in images), images
    text = page.inner_text("body")
    accuracy = f"{100 * report.analysis.metrics.accuracy:.2f}%"
    for expected in ("Test accuracy", accuracy, "Training curves", "Confusion matrix",
                     "Mistakes", "First layer", "conv1", "Total params", "Timings", EVIL,
                     "tiny-run", "strided-cnn"):
        assert expected in text, expected
    # the recipe's text is shown, not run: no script, no element it tried to add
    assert page.evaluate("document.scripts.length") == 0
    assert page.evaluate("window.evil") is None and page.locator("b").count() == 0
    assert not requests and not problems, (requests, problems)
    page.close()


def test_compare_overlays_two_runs(tmp_path, runs, browser):
    comparison = compare_runs(runs, tmp_path / "cmp")
    check_png(comparison.figure)
    assert [r.label for r in comparison.rows] == ["seed-0", "seed-1"]
    text = format_comparison(comparison)
    assert "seed-0" in text and "seed-1" in text and "tiny-run  2" in text  # by recipe
    page, requests, problems = open_page(browser, comparison.page)
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth > 300)") == [True]
    body = page.inner_text("body")
    assert "2 runs compared" in body and "By recipe" in body and "seed-1" in body
    assert page.evaluate("document.scripts.length") == 0 and not requests and not problems
    page.close()


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """What TensorBoard reads from one folder: {tag: [(step, value, wall time), ...]}, all kept."""
    reader = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    reader.Reload()
    return {tag: [(e.step, e.value, e.wall_time) for e in reader.Scalars(tag)]
            for tag in reader.Tags()["scalars"]}


def check_event_files(run_dir: Path, kinds=("train", "validation", "test"), records=None):
    """RUN/tensorboard/KIND holds one event file for each kind, and TensorBoard finds in it
    the tags, steps, values and times of metrics.jsonl's records of that kind, each once."""
    if records is None:
        records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    for kind, fields in tb.TAGS.items():
        files = list((run_dir / tb.FOLDER / kind).glob(tb.FILE_PREFIX + "*"))
        logged = [r for r in records if r["event"] == kind]
        if kind not in kinds:
            assert not files and not logged, kind
            continue
        assert len(files) == 1 and logged, (kind, files)
        found = tensorboard_scalars(run_dir / tb.FOLDER / kind)
        assert set(found) == {tag for key, tag in fields.items() if key in logged[0]}, kind
        for key, tag in fields.items():
            if tag in found:
                assert [(s, t) for s, _, t in found[tag]] == [(r["step"], r["time"]) for r in logged]
                assert [v for _, v, _ in found[tag]] == pytest.approx([r[key] for r in logged],
                                                                      rel=1e-6)


def test_live_event_files_hold_what_metrics_jsonl_holds(runs):
    for run_dir in runs:  # written during training, by the Trainer's on_log
        check_event_files(run_dir)
    steps = [s for s, _, _ in tensorboard_scalars(runs[0] / tb.FOLDER / "train")["learning_rate"]]
    assert steps[:4] == [5, 10, 15, 20]  # log_every 5


def test_report_rewrites_the_event_files_from_metrics_jsonl(tmp_path, runs, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(runs[1], run_dir)  # with its live event files
    for _ in range(2):  # each time the files are replaced, never added to
        assert main(["report", str(run_dir), "--device", "cpu", "--tensorboard"]) == 0
        assert f"TensorBoard event files: {run_dir / tb.FOLDER}" in capsys.readouterr().out
        check_event_files(run_dir)
    elsewhere = tmp_path / "elsewhere"
    assert main(["report", str(run_dir), "--out", str(elsewhere), "--device", "cpu",
                 "--tensorboard"]) == 0
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    check_event_files(elsewhere, records=records)


def test_a_resumed_run_replaces_its_event_files(tmp_path):
    rec = [{"event": "train", "step": s, "loss": 1 / s, "accuracy": 0.5, "lr": 0.1, "time": s}
           for s in (1, 2, 3)]
    with tb.TensorBoardLogger(tmp_path) as old:
        old.write(rec[:2] + [{**rec[2], "step": 9}])  # step 9 was logged after the checkpoint
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rec))
    with tb.TensorBoardLogger(tmp_path) as new:
        new(rec[2])  # the first record after the resume: already in metrics.jsonl
    check_event_files(tmp_path, kinds=("train",))


def test_a_run_that_fails_leaves_readable_event_files(tmp_path, small_mnist):
    (tmp_path / "tiny.toml").write_text(TINY)

    def fail(trainer, done):
        if done == 12:
            raise RuntimeError("a bug at step 12")

    run_dir = tmp_path / "run"
    logger = tb.TensorBoardLogger(run_dir)
    with pytest.raises(RuntimeError, match="step 12"):
        Trainer(load_recipe(tmp_path / "tiny.toml"), run_dir, device="cpu",
                data_dir=str(small_mnist), on_step=fail, on_log=logger, **QUIET).run()
    # the logger is still open: each record was on disk as soon as it was logged
    check_event_files(run_dir, kinds=("train",))
    assert [s for s, _, _ in tensorboard_scalars(run_dir / tb.FOLDER / "train")["loss"]] == [5, 10]
    logger.close()


# `tensorboard` cannot be imported in this process: the `tensorboard` extra is not installed
WITHOUT_TENSORBOARD = ("import sys; sys.modules['tensorboard'] = None; "
                       "from mnistlab.cli import main; sys.exit(main(sys.argv[1:]))")
NO_PACKAGE = ("mnistlab: error: --tensorboard needs the tensorboard package: "
              'pip install "mnistlab[tensorboard]"\n')


def without_tensorboard(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WITHOUT_TENSORBOARD, *argv],
                          capture_output=True, text=True, timeout=300)


def test_without_the_package_tensorboard_is_one_error_line_before_any_work(tmp_path, runs,
                                                                           small_mnist):
    (tmp_path / "tiny.toml").write_text(TINY)
    train = ["train", "--recipe", str(tmp_path / "tiny.toml"), "--steps", "2", "--device", "cpu",
             "--data-dir", str(small_mnist), "--quiet", "--no-report"]
    for seeds in ([], ["--seeds", "2"]):
        out = tmp_path / f"out{len(seeds)}"
        done = without_tensorboard(*train, *seeds, "--out", str(out), "--tensorboard")
        assert (done.returncode, done.stderr, done.stdout) == (1, NO_PACKAGE, "")
        assert not out.exists()  # nothing trained, no run folder left behind
    out = tmp_path / "report"
    done = without_tensorboard("report", str(runs[0]), "--out", str(out), "--device", "cpu",
                               "--tensorboard")
    assert (done.returncode, done.stderr, done.stdout) == (1, NO_PACKAGE, "")
    assert not out.exists()  # the error comes before the report is drawn
    # the same process trains without --tensorboard
    done = without_tensorboard(*train, "--out", str(tmp_path / "plain"))
    assert done.returncode == 0 and not done.stderr, done.stderr
    assert not (tmp_path / "plain" / tb.FOLDER).exists()


def test_an_unfinished_run_gets_a_report_on_validation(tmp_path, small_mnist, capsys):
    recipe = load_recipe("fast").with_length(steps=40)  # epochs of 8 steps on the small set

    def stop(trainer, done):
        if done == 20:
            trainer.request_stop()

    run_dir = tmp_path / "run"
    result = Trainer(recipe, run_dir, device="cpu", data_dir=str(small_mnist), on_step=stop,
                     on_log=tb.TensorBoardLogger(run_dir), **QUIET).run()
    assert result.interrupted
    check_event_files(run_dir, kinds=("train", "validation"))  # a stopped run's are whole
    report = write_report(run_dir, device="cpu")
    assert report.analysis.split == "validation"
    page = report.page.read_text()
    assert "unfinished: step 20 of 40" in page and "Validation accuracy" in page
    # resumed with live event files: they hold what metrics.jsonl holds, the first epoch included
    assert main(["train", "--resume", str(run_dir), "--device", "cpu", "--quiet",
                 "--tensorboard"]) == 0
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out
    check_event_files(run_dir)
    steps = [s for s, _, _ in tensorboard_scalars(run_dir / tb.FOLDER / "validation")["loss"]]
    assert steps == [8, 16, 24, 32, 40]


def test_the_train_command_writes_reports_and_event_files(tmp_path, small_mnist, capsys):
    (tmp_path / "tiny.toml").write_text(TINY)
    out = tmp_path / "out"
    assert main(["train", "--recipe", str(tmp_path / "tiny.toml"), "--steps", "6", "--seeds", "2",
                 "--device", "cpu", "--data-dir", str(small_mnist), "--out", str(out), "--quiet",
                 "--tensorboard"]) == 0
    printed = capsys.readouterr().out
    for seed in (0, 1):
        assert (out / f"seed-{seed}" / "report.html").is_file()
        assert f"report: {out / f'seed-{seed}' / 'report.html'}" in printed
        check_event_files(out / f"seed-{seed}")
    assert (out / "compare.html").is_file() and "the seeds compared" in printed
    assert main(["train", "--recipe", str(tmp_path / "tiny.toml"), "--steps", "2", "--device",
                 "cpu", "--data-dir", str(small_mnist), "--out", str(tmp_path / "plain"),
                 "--quiet", "--no-report"]) == 0
    assert not (tmp_path / "plain" / "report.html").exists()


def test_the_shipped_model_reports_only_elsewhere(tmp_path, small_mnist, capsys):
    assert main(["report", "default"]) == 1
    assert "--out" in capsys.readouterr().err
    # evaluated on the small test set, so that the test stays short
    assert main(["report", "default", "--out", str(tmp_path / "d"), "--device", "cpu",
                 "--data-dir", str(small_mnist)]) == 0
    page = (tmp_path / "d" / "report.html").read_text()
    assert "no metrics.jsonl" in page and "Training curves" not in page
    assert sorted(p.name for p in (tmp_path / "d" / "figures").iterdir()) == sorted(
        set(FIGURES) - {"curves.png"})


def errors(capsys, *argv) -> str:
    assert main(list(argv)) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.count("\n") == 1
    return captured.err


def test_bad_input_is_one_error_line(tmp_path, runs, capsys):
    assert "not a run folder" in errors(capsys, "report", str(tmp_path))
    assert "no such run folder" in errors(capsys, "report", str(tmp_path / "missing"))
    assert "not a run folder" in errors(capsys, "compare", str(runs[0] / METRICS_FILE))
    only_metrics = tmp_path / "only-metrics"
    only_metrics.mkdir()
    shutil.copy(runs[0] / METRICS_FILE, only_metrics)
    assert "no checkpoint" in errors(capsys, "report", str(only_metrics))

    broken = tmp_path / "broken"
    shutil.copytree(runs[0], broken)
    lines = (broken / METRICS_FILE).read_text().splitlines(keepends=True)
    (broken / METRICS_FILE).write_text("".join(lines[:3]) + "{not json\n" + "".join(lines[3:]))
    assert "line 4: not valid JSON" in errors(capsys, "report", str(broken))
    (broken / METRICS_FILE).write_text("".join(lines[:3]) + '{"event": "train", "step": 1}\n')
    assert "line 4: the train record has no number 'loss'" in errors(capsys, "report", str(broken))
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    assert "not a valid safetensors file" in errors(capsys, "compare", str(runs[1]), str(broken))

    # a last line cut short by a crash is left out, and the page says so
    cut = tmp_path / "cut"
    shutil.copytree(runs[1], cut)
    (cut / METRICS_FILE).write_text("".join(lines[:-1]) + lines[-1][:20])
    report = write_report(cut, device="cpu")
    assert "cut short" in report.page.read_text()


def test_recorded_metrics_of_another_shape_are_left_out_not_a_traceback(tmp_path, runs):
    """A checkpoint's metadata holds whatever its writer put there: `metrics.test` a list was
    an AttributeError in the report."""
    odd = tmp_path / "odd"
    shutil.copytree(runs[0], odd)
    (odd / METRICS_FILE).unlink()  # the page then falls back on what the checkpoint recorded
    tensors, meta = read_file(odd / MODEL_FILE)
    meta["metrics"] = {"test": [1], "validation": {"accuracy": "high"}, "train_seconds": "x"}
    write_file(odd / MODEL_FILE, tensors, json.dumps(meta))
    page = write_report(odd, device="cpu").page
    assert page.is_file() and "Validation accuracy" not in page.read_text()  # nor a number made up
    comparison = compare_runs([odd, runs[1]], tmp_path / "compared")
    assert comparison.page.is_file()


def test_a_report_never_replaces_another_runs_report(runs):
    """`report RUN --out OTHER_RUN` wrote over the other run's report.html and figures."""
    page = runs[1] / "report.html"
    before = page.read_bytes() if page.exists() else None
    with pytest.raises(ReportError, match=r"is another run's folder, whose own report would be "
                       r"replaced: write this one elsewhere with --out DIR"):
        write_report(runs[0], out=runs[1], device="cpu")
    assert (page.read_bytes() if page.exists() else None) == before
    # its own folder, named another way, is still its own
    assert write_report(runs[0], out=runs[0] / ".." / runs[0].name, device="cpu").page.is_file()


def test_a_report_drawn_again_leaves_no_figure_of_the_last_one(tmp_path, runs):
    """The run's log deleted, the report said "4 PNG figures" and figures/ still held the last
    report's curves.png, which the page no longer showed."""
    run = tmp_path / "run"
    shutil.copytree(runs[0], run)
    first = write_report(run, device="cpu")
    assert {p.name for p in first.figures} == set(FIGURE_NAMES)  # every figure, this time
    (run / METRICS_FILE).unlink()
    again = write_report(run, device="cpu")
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(p.name for p in again.figures)
    assert "curves.png" not in {p.name for p in again.figures}
