"""The predictor over real checkpoints, fed by the preprocessing, on real MNIST digits."""

import json
import threading

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mnistlab.checkpoint import load_model
from mnistlab.data.registry import load_arrays
from mnistlab.errors import MnistlabError
from mnistlab.inference import Predictor, split_digits, to_mnist

# whatever model ships as `default`, as its own metadata names it
DEFAULT_MODEL = load_model("default")[1]["model"]["name"]


@pytest.fixture(scope="module")
def mnist():
    return load_arrays("mnist")


def test_info_describes_the_model(predictor):
    info = predictor.info
    assert info["model"] == DEFAULT_MODEL and info["backend"] == "torch" and info["device"] == "cpu"
    assert info["parameters"] > 1000 and isinstance(info["args"], dict)
    assert info["checkpoint"].endswith("model.safetensors")
    assert 0.98 < info["test_accuracy"] <= 1.0
    assert info["class_names"] == [str(i) for i in range(10)]


def test_probabilities_on_mnist(predictor, mnist):
    probs = predictor.probabilities(mnist.test_images[:300])
    assert probs.shape == (300, 10) and probs.dtype == np.float32
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5) and (probs >= 0).all()
    assert (probs.argmax(1) == mnist.test_labels[:300]).mean() >= 0.98
    assert predictor.probabilities(np.zeros((0, 28, 28), np.uint8)).shape == (0, 10)


@pytest.mark.parametrize("scale", [1, 10])
def test_mnist_digits_saved_as_pictures_are_read(predictor, mnist, scale):
    """Test digits as a person would save them (dark on light, maybe enlarged), then read."""
    images, labels = mnist.test_images[:200], mnist.test_labels[:200]
    pictures = [Image.fromarray(255 - x) for x in images]
    if scale != 1:
        pictures = [p.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC) for p in pictures]
    batch = np.stack([to_mnist(p) for p in pictures])
    accuracy = (predictor.probabilities(batch).argmax(1) == labels).mean()
    assert accuracy >= 0.95


def test_pictures_cropped_tight_around_the_digit(predictor, mnist):
    """No margin: the border is as much ink as paper, so polarity comes from the whole picture."""
    images, labels = mnist.test_images[:100], mnist.test_labels[:100]
    batch = []
    for x in images:
        rows, cols = np.flatnonzero(x.any(1)), np.flatnonzero(x.any(0))
        crop = 255 - x[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        batch.append(to_mnist(Image.fromarray(crop).resize((crop.shape[1] * 5, crop.shape[0] * 5))))
    assert (predictor.probabilities(np.stack(batch)).argmax(1) == labels).mean() >= 0.9


def test_a_written_number_is_read(predictor, mnist):
    for picks in ([0, 1, 2], [3, 4, 5], [10, 11, 12]):
        number = np.concatenate([255 - mnist.test_images[i] for i in picks], axis=1)
        digits = split_digits(Image.fromarray(np.pad(number, 10, constant_values=255)))
        read = predictor.probabilities(np.stack(digits)).argmax(1).tolist()
        assert read == mnist.test_labels[picks].tolist()


def test_drawn_digits_are_read(predictor):
    zero = Image.new("L", (900, 900), 255)
    ImageDraw.Draw(zero).ellipse((280, 120, 620, 780), outline=0, width=2)  # thin pen
    one = Image.new("L", (200, 300), 40)
    ImageDraw.Draw(one).line([(100, 40), (96, 260)], fill=235, width=18)  # chalk on a board
    probs = predictor.probabilities(np.stack([to_mnist(zero), to_mnist(one)]))
    assert probs.argmax(1).tolist() == [0, 1]


def light_one_on_nothing(mode, background, ink, size=64):
    """A clear "1", light ink on a fully transparent background (a dark-mode canvas's export)."""
    image = Image.new(mode, (size, size), background)
    ImageDraw.Draw(image).line([(size // 2, 10), (size // 2, size - 10)], fill=ink, width=6)
    return image


@pytest.mark.parametrize("picture", [
    light_one_on_nothing("RGBA", (0, 0, 0, 0), (255, 255, 255, 255)),
    light_one_on_nothing("RGBA", (255, 255, 255, 0), (255, 255, 255, 255)),
    light_one_on_nothing("LA", (0, 0), (255, 255)),
    light_one_on_nothing("LA", (255, 0), (255, 255)),
    light_one_on_nothing("RGBA", (0, 0, 0, 0), (0, 0, 0, 255)),  # dark ink: read before, too
], ids=["rgba-on-black", "rgba-on-white", "la-on-black", "la-on-white", "black-ink"])
def test_a_one_on_a_transparent_canvas_is_read_as_1(picture, tmp_path, capsys):
    import mnistlab
    from mnistlab.cli import main

    assert mnistlab.load("default").predict(picture)[0].text == "1"
    path = tmp_path / "one.png"
    picture.save(path)
    assert main(["predict", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: 1 (")


def test_a_28x28x4_array_of_white_ink_on_transparency_is_read():
    import mnistlab

    for background in (0, 255):  # transparent black, transparent white
        array = np.full((28, 28, 4), background, dtype=np.uint8)
        array[..., 3] = 0
        array[4:24, 13:16] = 255  # an opaque white stroke: a 1
        reading = mnistlab.load("default").predict(array)[0]
        assert reading.text == "1" and reading.confidence > 0.5


def test_concurrent_calls_agree(predictor, mnist):
    images = mnist.test_images[:64]
    expected = predictor.probabilities(images)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = predictor.probabilities(images)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results:
        assert np.allclose(r, expected, atol=1e-6)


@pytest.mark.parametrize("images", [
    np.zeros((2, 28, 28), np.float32),
    np.zeros((28, 28), np.uint8),
    np.zeros((2, 1, 28, 28), np.uint8),
    np.zeros((2, 32, 32), np.uint8),
])
def test_bad_batches_are_refused(predictor, images):
    with pytest.raises(MnistlabError, match=r"\(N, 28, 28\)"):
        predictor.probabilities(images)


def test_load_errors_are_one_clear_line(tmp_path):
    with pytest.raises(MnistlabError, match="unknown backend 'tf'"):
        Predictor.load("default", backend="tf")
    with pytest.raises(MnistlabError, match="no such checkpoint"):
        Predictor.load(str(tmp_path / "nothing"))
    with pytest.raises(MnistlabError, match="onnx backend"):
        Predictor.load(str(tmp_path / "model.onnx"))
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"garbage")
    with pytest.raises(MnistlabError, match="not a valid safetensors"):
        Predictor.load(str(bad))
    with pytest.raises(MnistlabError, match="no such ONNX file"):
        Predictor.load(str(tmp_path / "model.onnx"), backend="onnx")
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a graph")
    with pytest.raises(MnistlabError, match="not a usable ONNX model"):
        Predictor.load(str(fake), backend="onnx")


# ---- the predict command -------------------------------------------------------------------


@pytest.fixture
def pictures(tmp_path, mnist):
    seven = tmp_path / "seven.png"
    Image.fromarray(255 - mnist.test_images[0]).resize((140, 140)).save(seven)
    number = tmp_path / "number.jpg"
    digits = np.concatenate([255 - mnist.test_images[i] for i in (0, 1, 2)], axis=1)
    Image.fromarray(np.pad(digits, 8, constant_values=255)).save(number, quality=92)
    blank = tmp_path / "blank.webp"
    Image.new("RGB", (60, 60), "white").save(blank)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return {"seven": seven, "number": number, "blank": blank, "broken": broken}


def test_predict_command(pictures, capsys):
    from mnistlab.cli import main

    code = main(["predict", str(pictures["seven"]), str(pictures["broken"]),
                 str(pictures["number"]), str(pictures["blank"])])
    out, err = capsys.readouterr()
    assert code == 1  # two of the four could not be read
    lines = out.splitlines()
    assert lines[0].startswith(f"{pictures['seven']}: 7 (") and "top 3: 7 " in lines[0]
    assert lines[1].startswith(f"{pictures['number']}: 721  (3 digits: 7 ")
    assert f"{pictures['broken']}: the PNG image is damaged (its header cannot be read)" in err
    assert f"{pictures['blank']}: no digit found (empty image)" in err
    assert "Traceback" not in err and len(err.splitlines()) == 2


def test_predict_command_says_each_kind_of_bad_image_in_one_line(tmp_path, capsys):
    from mnistlab.cli import main

    Image.new("RGB", (60, 60), "white").save(tmp_path / "blank.webp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "notes.png").write_bytes(b"hello, I am text")
    Image.new("L", (40, 40), 255).save(tmp_path / "scan.tiff")
    with open(tmp_path / "huge.png", "wb") as f:
        f.truncate(10 * 1024 * 1024 + 1)  # sparse: nothing written
    Image.new("1", (5000, 4000), 1).save(tmp_path / "bomb.png")
    (tmp_path / "folder.png").mkdir()
    said = {  # each file, and what the error's type and message say of it
        "blank.webp": "no digit found (empty image)",  # EmptyImageError
        "broken.png": "the PNG image is damaged (its header cannot be read)",  # Unreadable...
        "notes.png": "not a PNG, JPEG, BMP, GIF or WebP image",  # UnsupportedImageError
        "scan.tiff": "not a PNG, JPEG, BMP, GIF or WebP image",
        "huge.png": "the file is too large: 10,485,761 bytes, the limit is 10,485,760",  # TooLarge
        "bomb.png": "the image is too large: 5000x4000 pixels, the limit is 16,000,000 pixels",
        "folder.png": "not a regular file (a folder); the image must be a file",  # ImageFileError
        "missing.png": "no such image file",
    }
    assert main(["predict", *(str(tmp_path / name) for name in said)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [f"mnistlab: error: {tmp_path / name}: {words}"
                                for name, words in said.items()]


def test_predict_command_json(pictures, capsys):
    from mnistlab.cli import main

    code = main(["predict", str(pictures["seven"]), str(pictures["blank"]), "--json",
                 "--top-k", "2", "--number", "--backend", "onnx"])
    out, err = capsys.readouterr()
    assert code == 1 and err == ""
    doc = json.loads(out)
    assert doc["model"]["backend"] == "onnx" and doc["model"]["model"] == DEFAULT_MODEL
    seven, blank = doc["images"]
    assert seven["kind"] == "number" and seven["number"] == "7"  # --number: even one digit
    assert len(seven["digits"][0]["top"]) == 2
    assert blank == {"image": str(pictures["blank"]),
                     "error": f"{pictures['blank']}: no digit found (empty image)"}


def test_predict_command_runs_an_onnx_file_with_onnx_runtime(pictures, capsys, tmp_path):
    from mnistlab.cli import main
    from mnistlab.inference.export import export_onnx

    onnx_file = export_onnx("default", tmp_path / "digits.onnx", verify_images=20).path
    code = main(["predict", str(pictures["seven"]), "--model", str(onnx_file), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    doc = json.loads(out)
    assert doc["model"]["backend"] == "onnx" and doc["model"]["checkpoint"] == str(onnx_file)
    assert doc["images"][0]["digit"] == "7"


def test_predict_command_bad_model(pictures, capsys, tmp_path):
    from mnistlab.cli import main

    assert main(["predict", str(pictures["seven"]), "--model", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mnistlab: error: ") and "no such checkpoint" in err
    assert len(err.splitlines()) == 1


def test_batches_run_at_a_few_padded_sizes_with_the_same_answers():
    """The torch backend pads a batch to one of 28 sizes (a bound on what oneDNN keeps per
    shape); an image's probabilities do not depend on the batch it came in."""
    from mnistlab.inference.predictor import padded_size

    sizes = {padded_size(n) for n in range(1, 257)}
    assert len(sizes) == 28 and max(sizes) == 256
    assert all(n <= padded_size(n) < 1.25 * n for n in range(1, 257))
    predictor = Predictor.load("default")
    images = load_arrays("mnist").test_images[:21]  # padded to 24
    together = predictor.probabilities(images)
    alone = np.concatenate([predictor.probabilities(images[i:i + 1]) for i in range(len(images))])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_a_number_of_one_digit_is_said_so():
    from mnistlab.inference.reading import DigitReading, Reading, format_reading

    one = Reading([DigitReading("7", 0.9, [("7", 0.9)])], True, np.zeros((1, 28, 28), np.uint8))
    assert format_reading("a.png", one) == "a.png: 7  (1 digit: 7 90.0%)"
