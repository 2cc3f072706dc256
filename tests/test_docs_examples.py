"""The examples in the public API's docstrings, and the notebook tour, run as written."""

import doctest
import importlib
import io
import re
from pathlib import Path

import nbclient
import nbformat
import pytest
from PIL import Image

import mnistlab

PUBLIC = ["mnistlab", "mnistlab.api", "mnistlab.model", "mnistlab.datasets"]
ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "examples" / "tour.ipynb"


@pytest.mark.parametrize("name", PUBLIC)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples that train write into ./runs
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    globs = {"mnistlab": mnistlab, "model": mnistlab.load("default", device="cpu")}
    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, globs=globs) if t.examples]
    for test in tests:
        runner.run(test, out=report.write)
    assert tests and runner.tries > 0
    assert runner.failures == 0, report.getvalue()


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, with the two pictures it reads made first (a user's own)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## From Python.*?```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    images, _ = mnistlab.datasets.load("mnist", split="test")
    Image.fromarray(255 - images[0]).save("digit.png")  # dark ink on white, as a user draws
    Image.fromarray(255 - images[1]).convert("RGB").save("photo.jpg")
    names: dict = {}
    exec(compile(block, "README.md", "exec"), names)
    assert names["run"].test_accuracy > 0.98
    assert [r.text for r in names["model"].predict(["digit.png", "photo.jpg"])] == ["7", "2"]
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_every_public_function_has_an_example():
    import mnistlab.api
    import mnistlab.datasets
    import mnistlab.model

    without = []
    for module in (mnistlab.api, mnistlab.model, mnistlab.datasets):
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and not isinstance(value, type) and ">>>" not in (value.__doc__ or ""):
                without.append(f"{module.__name__}.{name}")
    assert without == []


def test_the_tour_notebook_runs_offline(tmp_path, monkeypatch):
    """Every cell, in order, with the tutorials cut to 30 steps; any error fails the test."""
    monkeypatch.setenv("MNISTLAB_TOUR_STEPS", "30")
    notebook = nbformat.read(TOUR, as_version=4)
    nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in shown if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in shown) >= 4  # the figures, inline


def test_the_committed_tour_holds_its_outputs():
    """Committed executed, so that it reads on a code host without running it."""
    notebook = nbformat.read(TOUR, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert all(c.outputs for c in code if not c.source.startswith(("import", "def")))
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
