"""Reports: a tiny run's report.html and figures, opened in Debian's Chromium; compare; the
TensorBoard event files decoded back; bad input as one error line."""

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mnistlab.cli import main
from mnistlab.errors import MnistlabError
from mnistlab.recipes import load_recipe
from mnistlab.recipes.recipe import parse_recipe
from mnistlab.report import tensorboard as tb
from mnistlab.report.build import recipe_toml, write_report
from mnistlab.report.compare import compare_runs, format_comparison
from mnistlab.training.engine import METRICS_FILE, Trainer
from mnistlab.training.progress import Progress

QUIET = dict(progress=Progress(1, quiet=True))
# the description is a user's text: the page must show it, never run it
EVIL = '<script>window.evil = 1</script><img src="https://example.com/x.png"> & "quotes"'
TINY = f"""
name = "tiny <b>run</b>"
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
                     "tiny <b>run</b>", "strided-cnn"):
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
    assert "seed-0" in text and "seed-1" in text and "tiny <b>run</b>  2" in text  # by recipe
    page, requests, problems = open_page(browser, comparison.page)
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth > 300)") == [True]
    body = page.inner_text("body")
    assert "2 runs compared" in body and "By recipe" in body and "seed-1" in body
    assert page.evaluate("document.scripts.length") == 0 and not requests and not problems
    page.close()


def test_tensorboard_files_decode_to_the_logged_scalars(runs):
    records = [json.loads(line) for line in (runs[0] / METRICS_FILE).read_text().splitlines()]
    for kind, fields in tb.TAGS.items():
        files = list((runs[0] / tb.FOLDER / kind).glob(tb.FILE_PREFIX + "*"))
        assert len(files) == 1
        events = tb.read_events(files[0])
        assert events[0]["file_version"] == "brain.Event:2"
        logged = [r for r in records if r["event"] == kind]
        assert [e["step"] for e in events[1:]] == [r["step"] for r in logged] and logged
        for event, record in zip(events[1:], logged):
            assert event["wall_time"] == record["time"]
            assert set(event["scalars"]) == {tag for key, tag in fields.items() if key in record}
            for key, tag in fields.items():
                assert event["scalars"][tag] == pytest.approx(record[key], rel=1e-6)


def test_tensorboard_encoding_and_a_resumed_run(tmp_path):
    assert tb.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    event = tb.encode_event(1.5, 2**40, scalars={"loss": 0.25, "accuracy": 0.5})
    assert tb.decode_event(event) == {"wall_time": 1.5, "step": 2**40,
                                      "scalars": {"loss": 0.25, "accuracy": 0.5}}
    assert list(tb.unframe(tb.frame(event) + tb.frame(b""))) == [event, b""]
    with pytest.raises(MnistlabError, match="checksum"):
        list(tb.unframe(tb.frame(event)[:-1] + b"\x00"))
    # a resumed run: the earlier event files are replaced by what metrics.jsonl still holds
    rec = [{"event": "train", "step": s, "loss": 1 / s, "accuracy": 0.5, "lr": 0.1, "time": s}
           for s in (1, 2, 3)]
    old = tb.TensorBoardLogger(tmp_path)
    old.write(rec[:2] + [{**rec[2], "step": 9}])  # step 9 was logged after the checkpoint
    old.close()
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rec))
    new = tb.TensorBoardLogger(tmp_path)
    new(rec[2])  # the first record after the resume: already in metrics.jsonl
    new.close()
    (events_file,) = (tmp_path / tb.FOLDER / "train").iterdir()
    assert [e["step"] for e in tb.read_events(events_file)] == [0, 1, 2, 3]


def test_an_unfinished_run_gets_a_report_on_validation(tmp_path, small_mnist, capsys):
    recipe = load_recipe("fast").with_length(steps=40)  # epochs of 8 steps on the small set

    def stop(trainer, done):
        if done == 20:
            trainer.request_stop()

    run_dir = tmp_path / "run"
    result = Trainer(recipe, run_dir, device="cpu", data_dir=str(small_mnist), on_step=stop,
                     **QUIET).run()
    assert result.interrupted
    report = write_report(run_dir, device="cpu")
    assert report.analysis.split == "validation"
    page = report.page.read_text()
    assert "unfinished: step 20 of 40" in page and "Validation accuracy" in page
    # resumed with live event files: they hold what metrics.jsonl holds, the first epoch included
    assert main(["train", "--resume", str(run_dir), "--device", "cpu", "--quiet",
                 "--tensorboard"]) == 0
    assert f"report: {run_dir / 'report.html'}" in capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]
    for kind in ("train", "validation"):
        (events,) = (run_dir / tb.FOLDER / kind).iterdir()
        steps = [r["step"] for r in records if r["event"] == kind]
        assert [e["step"] for e in tb.read_events(events)[1:]] == steps and steps[0] == 8


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
        assert list((out / f"seed-{seed}" / "tensorboard" / "test").iterdir())
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
