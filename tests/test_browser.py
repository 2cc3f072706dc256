"""The drawing page in a real browser: Debian's Chromium, driven by Playwright, against the real
server (uvicorn on 127.0.0.1) and the real shipped model. Strokes are drawn with the mouse, as a
person would, and the page must show what the model read."""

import io
import math
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mnistlab.data.registry import load_arrays
from mnistlab.inference.predictor import Predictor
from mnistlab.serve import create_app
from mnistlab.serve.server import running_server

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium") or "")
                 if p and Path(p).is_file()), None)
if CHROMIUM is None:
    pytest.skip("browser tests need Debian's Chromium (/usr/bin/chromium; "
                "apt-get install chromium): it is not installed", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                               "(pip install -e '.[test]')")
expect = sync_api.expect

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000


@pytest.fixture(scope="module")
def server():
    with running_server(create_app(Predictor.load("default"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@contextmanager
def opened(browser, url):
    """The page at `url`, loaded; no script error nor console error may happen on it."""
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    # a 4xx or 5xx answer is logged by the browser as a failed resource: that one is expected
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
            and problems.append(m.text))
    page.goto(url + "/")
    expect(page.locator("#model")).not_to_have_text("model: loading…", timeout=WAIT_MS)
    yield page
    page.close()
    assert not problems, problems


@pytest.fixture
def page(browser, server):
    with opened(browser, server) as page:
        yield page


class Pad:
    """Draws on the page's canvas in fractions of its size (x across, y down)."""

    def __init__(self, page):
        self.page = page
        box = page.locator("#pad").bounding_box()
        self.x, self.y, self.w, self.h = box["x"], box["y"], box["width"], box["height"]

    def at(self, fx, fy):
        return self.x + fx * self.w, self.y + fy * self.h

    def stroke(self, points, steps=6, release=True):
        mouse = self.page.mouse
        mouse.move(*self.at(*points[0]))
        mouse.down()
        for point in points[1:]:
            mouse.move(*self.at(*point), steps=steps)
        if release:
            mouse.up()


def one(pad, cx=0.5):
    pad.stroke([(cx, 0.15), (cx, 0.85)], steps=12)


def seven(pad, cx=0.5):
    pad.stroke([(cx - 0.08, 0.18), (cx + 0.08, 0.18)])  # the bar
    pad.stroke([(cx + 0.08, 0.18), (cx + 0.01, 0.5), (cx - 0.03, 0.85)])  # the stem


def zero(pad, cx=0.5):
    rx, ry = 0.07, 0.32
    left = [(cx + rx * math.sin(t), 0.5 - ry * math.cos(t)) for t in np.linspace(0, -math.pi, 12)]
    right = [(cx + rx * math.sin(t), 0.5 - ry * math.cos(t)) for t in np.linspace(0, math.pi, 12)]
    pad.stroke(left, steps=2)
    pad.stroke(right, steps=2)


def test_page_reads_a_drawn_one_while_it_is_drawn(page):
    pad = Pad(page)
    pad.stroke([(0.5, 0.15), (0.5, 0.85)], steps=20, release=False)
    # the pointer is still down: the answer comes from the requests sent while drawing
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    page.mouse.up()
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#bars li")).to_have_count(10)  # every class's probability
    expect(page.locator("#seen-figure")).to_be_visible()
    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#single")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("Draw a digit to start.")


@pytest.mark.parametrize("shape,digit", [(seven, "7"), (zero, "0")], ids=["seven", "zero"])
def test_page_reads_digits_of_several_strokes(page, shape, digit):
    shape(Pad(page))
    expect(page.locator("#digit")).to_have_text(digit, timeout=WAIT_MS)
    expect(page.locator("#status")).to_have_text(f"Looks like a {digit}.")


def test_page_reads_a_number_written_side_by_side(page):
    pad = Pad(page)
    one(pad, cx=0.3)
    seven(pad, cx=0.6)
    expect(page.locator("#number")).to_have_text("17", timeout=WAIT_MS)
    expect(page.locator("#digits > li")).to_have_count(2)
    expect(page.locator("#single")).to_be_hidden()


def test_page_reads_a_digit_drawn_with_a_finger(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    page.goto(server + "/")
    pad = Pad(page)
    cdp = context.new_cdp_session(page)

    def touch(kind, fx=None, fy=None):
        points = [] if fx is None else [dict(zip(("x", "y"), pad.at(fx, fy)))]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    touch("touchStart", 0.5, 0.12)
    for fy in np.linspace(0.12, 0.88, 15)[1:]:  # a "1": one stroke down the pad
        touch("touchMove", 0.5, fy)
    touch("touchEnd")
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    assert page.evaluate("window.scrollY") == 0  # the finger drew, it did not scroll the page
    context.close()


def test_page_reads_an_uploaded_mnist_digit_and_shows_what_the_model_saw(page):
    mnist = load_arrays("mnist")
    pixels, label = mnist.test_images[8], int(mnist.test_labels[8])
    buffer = io.BytesIO()
    Image.fromarray(255 - np.asarray(pixels, np.uint8)).resize((140, 140)).save(buffer, "PNG")
    page.set_input_files("#file", files=[{"name": "digit.png", "mimeType": "image/png",
                                          "buffer": buffer.getvalue()}])
    expect(page.locator("#digit")).to_have_text(str(label), timeout=WAIT_MS)
    expect(page.locator("#uploaded-figure")).to_be_visible()
    expect(page.locator("#filename")).to_have_text("digit.png")
    expect(page.locator("#seen-figure")).to_be_visible()
    # the 28x28 preview holds the model's input: light ink on black, not a blank square
    ink = page.evaluate("""() => {
        const d = document.getElementById('seen').getContext('2d').getImageData(0, 0, 28, 28).data;
        let lit = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 128) lit++;
        return [lit, d[0]];
    }""")
    assert 30 < ink[0] < 400 and ink[1] == 0


def test_page_says_when_an_upload_is_not_an_image(page):
    page.set_input_files("#file", files=[{"name": "notes.png", "mimeType": "image/png",
                                          "buffer": b"not a picture at all"}])
    expect(page.locator("#status")).to_have_class("status muted error", timeout=WAIT_MS)
    expect(page.locator("#single")).to_be_hidden()


@pytest.mark.parametrize("pixels, message", [
    (np.full((64, 64), 255), "No digit found: the image is empty."),
    (np.random.default_rng(0).integers(0, 256, (64, 64)),
     "No digit found: the picture is noise, where no stroke could stand out."),
], ids=["blank", "static"])
def test_page_says_why_an_upload_holds_no_digit(page, pixels, message):
    buffer = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8)).save(buffer, "PNG")
    page.set_input_files("#file", files=[{"name": "nothing.png", "mimeType": "image/png",
                                          "buffer": buffer.getvalue()}])
    expect(page.locator("#status")).to_have_text(message, timeout=WAIT_MS)


# ---- every probability, undo, brush, keyboard, phone width ------------------------------------


def ink(page) -> int:
    """How many of the pad's pixels are dark."""
    return page.evaluate("""() => {
        const c = document.getElementById('pad');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++;
        return n;
    }""")


def test_each_reading_shows_every_class_s_probability_the_top_one_marked(page):
    seven(Pad(page))
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    bars = page.locator("#bars li")
    expect(bars).to_have_count(10)
    assert [bars.nth(i).locator(".label").inner_text() for i in range(10)] == [str(i) for i in range(10)]
    expect(page.locator("#bars li.top")).to_have_count(1)
    expect(page.locator("#bars li.top .label")).to_have_text("7")
    expect(page.locator("#bars li.top")).to_have_attribute("aria-label", re.compile(r"^7: .*\(most likely\)$"))
    widths = [float(bars.nth(i).locator(".bar > span").get_attribute("style").split(":")[1].strip(" %;"))
              for i in range(10)]
    assert abs(sum(widths) - 100) < 1.5 and max(widths) == widths[7]
    # a number: each digit has its own ten bars, its top one marked
    page.get_by_role("button", name="Clear").click()
    pad = Pad(page)
    one(pad, cx=0.3)
    seven(pad, cx=0.6)
    expect(page.locator("#number")).to_have_text("17", timeout=WAIT_MS)
    expect(page.locator("#digits li .bars li")).to_have_count(20)
    expect(page.locator("#digits li .bars li.top .label")).to_have_text(["1", "7"])


def test_undo_takes_back_the_last_stroke_and_reads_again(page):
    expect(page.get_by_role("button", name="Undo")).to_be_disabled()
    pad = Pad(page)
    one(pad, cx=0.3)
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    alone = ink(page)
    seven(pad, cx=0.6)
    expect(page.locator("#number")).to_have_text("17", timeout=WAIT_MS)
    page.get_by_role("button", name="Undo").click()  # the 7's stem: its bar is left
    page.get_by_role("button", name="Undo").click()  # the bar
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#multi")).to_be_hidden()
    assert ink(page) == alone  # the pad redrawn exactly as it was after the 1
    page.locator("#pad").focus()
    page.keyboard.press("Control+z")  # by keyboard too: the last stroke, the pad now empty
    expect(page.locator("#status")).to_have_text("Draw a digit to start.")
    expect(page.locator("#single")).to_be_hidden()
    assert ink(page) == 0
    expect(page.get_by_role("button", name="Undo")).to_be_disabled()


def test_the_brush_size_sets_the_stroke_s_width(page):
    slider = page.get_by_label("Brush")
    slider.fill("1")
    one(Pad(page), cx=0.3)
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    thin = ink(page)
    page.get_by_role("button", name="Clear").click()
    slider.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")  # by keyboard: to the broadest
    expect(slider).to_have_attribute("aria-valuetext", "broadest")
    one(Pad(page), cx=0.3)
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    assert ink(page) > 2.5 * thin


def test_the_controls_are_reached_by_keyboard_with_a_visible_focus(page):
    one(Pad(page))
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    page.locator("#pad").focus()
    seen = []
    for _ in range(4):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => { const e = document.activeElement;
            const s = getComputedStyle(e); return [e.id, s.outlineStyle, s.outlineWidth]; }""")
        seen.append(focused[0])
        assert focused[1] != "none" and focused[2] != "0px", focused
    assert seen[:3] == ["undo", "clear", "brush"] and seen[3] == "file"
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")  # on Undo
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_have_text("Draw a digit to start.")


def test_the_page_fits_a_phone_s_width(browser, server):
    context = browser.new_context(viewport={"width": 360, "height": 740}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)
    page = context.new_page()
    page.goto(server + "/")
    expect(page.locator("#model")).not_to_have_text("model: loading…", timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.scrollWidth") <= 360  # no sideways scrolling
    box = page.locator("#pad").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 360 and box["width"] > 300
    for name in ("Undo", "Clear"):
        assert page.get_by_role("button", name=name).bounding_box()["height"] >= 36  # a finger's
    context.close()


# ---- corrections (mnistlab serve --collect DIR) ---------------------------------------------


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    return tmp_path_factory.mktemp("collected")


@pytest.fixture(scope="module")
def collecting_server(collected):
    with running_server(create_app(Predictor.load("default"), collect=collected)) as url:
        yield url


@pytest.fixture
def collecting_page(browser, collecting_server):
    with opened(browser, collecting_server) as page:
        yield page


SAVED = re.compile(r"Saved as (\w+): (train/\w+/[0-9-]+-[0-9a-f]{8}\.png)")


def saved_file(page, folder: Path, label: str) -> Path:
    """The file the page says it saved as `label`, checked to be the pad as drawn."""
    expect(page.locator("#saved")).to_have_text(SAVED, timeout=WAIT_MS)
    shown, name = SAVED.fullmatch(page.locator("#saved").inner_text()).groups()
    assert shown == label and name.startswith(f"train/{label}/")
    with Image.open(folder / name) as image:  # the whole pad, not the 28x28 input
        assert image.format == "PNG" and image.size == (560, 280)
        grey = np.asarray(image.convert("L"))
    assert grey.min() < 50 and np.median(grey) == 255  # dark ink on a white pad
    return folder / name


def test_page_stores_a_correction_of_a_drawing(collecting_page, collected):
    page = collecting_page
    expect(page.locator("#collect-where")).to_have_text(
        f"Corrections are stored as drawn in {collected / 'train'}/<class>/, to train a model on.")
    seven(Pad(page))
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    choices = page.get_by_role("group", name="Wrong? It was:")
    expect(choices.get_by_role("button")).to_have_count(10)
    choices.get_by_role("button", name="3", exact=True).click()
    first = saved_file(page, collected, "3")
    # by keyboard: the buttons are reached with Tab and pressed with Enter
    choices.get_by_role("button", name="4", exact=True).focus()
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    second = saved_file(page, collected, "5")
    assert first != second and first.exists()
    assert {"3", "5"} <= {p.name for p in (collected / "train").iterdir()}


def test_page_stores_a_correction_of_an_uploaded_file_as_the_file(collecting_page, collected):
    buffer = io.BytesIO()
    Image.fromarray(255 - load_arrays("mnist").test_images[0]).save(buffer, "PNG")  # a 7
    page = collecting_page
    page.set_input_files("#file", files=[{"name": "seven.png", "mimeType": "image/png",
                                          "buffer": buffer.getvalue()}])
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    page.get_by_role("group", name="Wrong? It was:").get_by_role("button", name="2", exact=True).click()
    expect(page.locator("#saved")).to_have_text(SAVED, timeout=WAIT_MS)
    name = SAVED.fullmatch(page.locator("#saved").inner_text()).group(2)
    assert name.startswith("train/2/") and (collected / name).read_bytes() == buffer.getvalue()


def test_page_offers_corrections_for_one_digit_and_says_why_not_for_a_number(collecting_page):
    page = collecting_page
    pad = Pad(page)
    one(pad, cx=0.3)
    seven(pad, cx=0.6)
    expect(page.locator("#number")).to_have_text("17", timeout=WAIT_MS)
    expect(page.get_by_role("group", name="Wrong? It was:")).to_be_hidden()
    expect(page.locator("#correct-many")).to_be_visible()
    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#correct")).to_be_hidden()


def test_page_shows_a_correction_that_could_not_be_stored_as_text(collecting_page, collected):
    page = collecting_page
    (collected / "train" / "9").write_text("a file where the class's folder should be")
    one(Pad(page))
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    page.get_by_role("group", name="Wrong? It was:").get_by_role("button", name="9", exact=True).click()
    expect(page.locator("#saved")).to_have_text(
        "Not saved: cannot store the image in train/9/: not a folder; nothing was stored",
        timeout=WAIT_MS)
    expect(page.locator("#saved")).to_have_class("saved error")


def test_page_offers_no_corrections_when_the_server_does_not_collect(page):
    one(Pad(page))
    expect(page.locator("#digit")).to_have_text("1", timeout=WAIT_MS)
    expect(page.locator("#correct")).to_be_hidden()
    expect(page.locator("#collect-where")).to_be_hidden()
    assert page.locator("#classes button").count() == 0


# ---- several models: the menu and the comparison --------------------------------------------

MODELS = ["keras-cnn", "softmax-regression", "default"]


@pytest.fixture(scope="module")
def models_server():
    predictors = {"keras-cnn": Predictor.load("keras-cnn", backend="onnx"),
                  "softmax-regression": Predictor.load("softmax-regression", backend="onnx"),
                  "default": Predictor.load("default")}
    with running_server(create_app(predictors)) as url:
        yield url


@pytest.fixture
def models_page(browser, models_server):
    with opened(browser, models_server) as page:
        yield page


def test_the_model_menu_lists_the_models_and_picks_one(models_page):
    page = models_page
    menu = page.get_by_label("Model", exact=True)
    expect(menu.locator("option")).to_have_count(3)
    assert menu.locator("option").all_inner_texts() == [
        "keras-cnn (keras-cnn, 99.14%, onnx)", "softmax-regression (softmax, 91.68%, onnx)",
        "default (mnistlab-cnn, 99.74%, torch)"]
    expect(page.locator("#model")).to_contain_text("keras-cnn (keras-cnn, test accuracy 99.14%, "
                                                   "predictions by ONNX Runtime)")
    seven(Pad(page))
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    first = page.locator("#confidence").inner_text()
    menu.focus()
    page.keyboard.press("ArrowDown")  # by keyboard: the next model, read again at once
    expect(page.locator("#model")).to_contain_text("softmax-regression")
    expect(page.locator("#confidence")).not_to_have_text(first, timeout=WAIT_MS)


def test_compare_shows_every_model_s_reading_of_one_drawing(models_page):
    page = models_page
    compare = page.get_by_role("button", name="Compare all")
    seven(Pad(page))
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    expect(page.locator("#comparison")).to_be_hidden()
    compare.click()
    expect(compare).to_have_attribute("aria-pressed", "true")
    cards = page.locator("#compare-grid .card")
    expect(cards).to_have_count(3, timeout=WAIT_MS)
    expect(cards.locator("h3")).to_have_text(MODELS)
    expect(cards.locator(".reading")).to_have_text([re.compile(r"^7\d")] * 3)
    expect(cards.first).to_have_class("card chosen")
    for i in range(3):
        expect(cards.nth(i).locator(".bars li")).to_have_count(10)
        expect(cards.nth(i).locator(".bars li.top .label")).to_have_text("7")
    sure = cards.locator(".reading small").all_inner_texts()
    assert len(set(sure)) == 3, sure  # three models, three probabilities
    # a number drawn while comparing: each model reads it, each digit with its bars
    page.get_by_role("button", name="Clear").click()
    expect(page.locator("#comparison")).to_be_hidden()
    pad = Pad(page)
    one(pad, cx=0.3)
    seven(pad, cx=0.6)
    expect(cards.locator(".reading")).to_have_text([re.compile(r"^17\d")] * 3, timeout=WAIT_MS)
    expect(cards.nth(1).locator(".bars")).to_have_count(2)
    compare.press("Enter")  # off again, by keyboard
    expect(page.locator("#comparison")).to_be_hidden()


# ---- what the network sees -------------------------------------------------------------------


def loaded_images(page, selector):
    """The natural sizes of the images under `selector`, once every one has loaded."""
    page.wait_for_function(f"""() => [...document.querySelectorAll('{selector} img')]
        .every(i => i.complete && i.naturalWidth > 0)""", timeout=WAIT_MS)
    return page.evaluate(f"""() => [...document.querySelectorAll('{selector} img')]
        .map(i => [i.naturalWidth, i.naturalHeight, i.alt])""")


def test_the_page_shows_a_cnn_s_feature_maps_and_saliency_on_demand(models_page):
    page = models_page
    seven(Pad(page))
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    expect(page.locator("#explanation")).to_be_hidden()
    button = page.get_by_role("button", name="What the network sees")
    button.click()
    expect(button).to_have_attribute("aria-expanded", "true")
    expect(page.locator("#explain-images figure")).to_have_count(4, timeout=WAIT_MS)
    sizes = loaded_images(page, "#explain-images")
    assert sizes[0][:2] == [28, 28] and "saliency" in sizes[0][2]
    assert [alt for _, _, alt in sizes[1:]] == [
        "the 32 feature maps of layer conv1", "the 64 feature maps of layer conv2",
        "the 64 feature maps of layer conv3"]
    expect(page.locator("#explain-images figcaption").first).to_have_text('Pixels that moved "7" most')
    # open, it follows the reading: an uploaded 2 is explained in its turn
    buffer = io.BytesIO()
    Image.fromarray(255 - load_arrays("mnist").test_images[1]).save(buffer, "PNG")  # a 2
    page.set_input_files("#file", files=[{"name": "two.png", "mimeType": "image/png",
                                          "buffer": buffer.getvalue()}])
    expect(page.locator("#digit")).to_have_text("2", timeout=WAIT_MS)
    expect(page.locator("#explain-images figcaption").first).to_have_text(
        'Pixels that moved "2" most', timeout=WAIT_MS)
    button.press("Enter")  # closed again, by keyboard
    expect(page.locator("#explanation")).to_be_hidden()
    page.get_by_role("button", name="Clear").click()


def test_the_page_shows_the_softmax_regression_s_templates(models_page):
    page = models_page
    page.get_by_label("Model", exact=True).select_option("softmax-regression")
    seven(Pad(page))
    expect(page.locator("#digit")).to_have_text("7", timeout=WAIT_MS)
    page.get_by_role("button", name="What the network sees").click()
    expect(page.locator("#explain-images .templates figure")).to_have_count(10, timeout=WAIT_MS)
    sizes = loaded_images(page, "#explain-images .templates")
    assert all(size[:2] == [28, 28] for size in sizes)
    expect(page.locator("#explain-images .templates figure.top figcaption")).to_have_text("7")
    expect(page.locator("#explain-status")).to_contain_text("no convolutions")
