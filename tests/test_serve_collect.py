"""`mnistlab serve --collect DIR`: corrections stored as training images, against the shipped
model. Each stored file is the image exactly as sent, in DIR/train/<class>/; every refusal is
the table's status and code with nothing written; nothing is ever overwritten."""

import errno
import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_serve_errors import watched

from mnistlab.errors import MnistlabError
from mnistlab.inference.errors import (
    EmptyImageError,
    ImageTooLargeError,
    UnreadableImageError,
    UnsupportedImageError,
)
from mnistlab.serve import create_app
from mnistlab.serve.app import MAX_BODY_BYTES
from mnistlab.serve.collect import Collector, folder_problem
from mnistlab.serve.errors import (
    COLLECT_ONLY,
    ERRORS,
    CollectionFullError,
    InvalidRequestError,
    StorageError,
    UnknownLabelError,
    UnsupportedMediaTypeError,
)
from mnistlab.serve.models import CollectResponse


@pytest.fixture
def folder(tmp_path):
    return tmp_path / "collected"


@pytest.fixture
def seen():
    return []


@pytest.fixture
def client(predictor, folder, seen):
    with TestClient(watched(create_app(predictor, collect=folder), seen)) as c:
        yield c


def drawn(kind: str = "PNG", ink: bool = True) -> bytes:
    """The page's pad as it sends it: 560x280, dark ink on white (a "1"), as `kind`."""
    pad = np.full((280, 560), 255, np.uint8)
    if ink:
        pad[40:240, 272:290] = 20
    buffer = io.BytesIO()
    Image.fromarray(pad).convert("RGB").save(buffer, kind)
    return buffer.getvalue()


def png(data: bytes) -> dict:
    return dict(content=data, headers={"Content-Type": "image/png"})


def stored(folder: Path) -> list[Path]:
    """Every file under the folder's train/, hidden ones included (none should be left)."""
    return sorted(p for p in (folder / "train").rglob("*") if p.is_file())


# ---- storing -------------------------------------------------------------------------------


def test_a_correction_is_stored_as_sent_in_its_class_folder(client, folder):
    data = drawn()
    r = client.post("/api/collect", params={"label": "3"}, **png(data))
    assert r.status_code == 201, r.text
    answer = CollectResponse.model_validate_json(r.content)
    assert answer.model_dump_json() == r.text and answer.label == "3"
    path = folder / answer.file
    assert answer.file.startswith("train/3/") and answer.file.endswith(".png")
    assert stored(folder) == [path]  # no temporary file, no probe left beside it
    assert path.read_bytes() == data  # as drawn: the pad's PNG, not the 28x28 input
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (560, 280)
    # a multipart upload (the page's file input) and a JPEG, kept in their own format
    jpeg = drawn("JPEG")
    r = client.post("/api/collect", params={"label": "7"}, files={"file": ("x.jpg", jpeg, "image/jpeg")})
    assert r.status_code == 201, r.text
    assert r.json()["file"].startswith("train/7/") and r.json()["file"].endswith(".jpg")
    assert (folder / r.json()["file"]).read_bytes() == jpeg


def test_two_quick_stores_are_two_files_never_one_overwritten(client, folder):
    data = drawn()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: client.post("/api/collect", params={"label": "5"},
                                                      **png(data)), range(16)))
    assert [r.status_code for r in answers] == [201] * 16
    names = {r.json()["file"] for r in answers}
    assert len(names) == 16 and {folder / n for n in names} == set(stored(folder))


def test_a_taken_name_is_never_replaced(client, folder, monkeypatch):
    from mnistlab.serve import collect

    first = client.post("/api/collect", params={"label": "2"}, **png(drawn())).json()["file"]
    before = (folder / first).read_bytes()
    names = iter([Path(first).name, "fresh.png"])  # the next name drawn is the one taken
    monkeypatch.setattr(collect, "new_name", lambda extension: next(names))
    other = drawn("BMP")
    r = client.post("/api/collect", params={"label": "2"}, **png(other))
    assert r.status_code == 201 and r.json()["file"] == "train/2/fresh.png"
    assert (folder / first).read_bytes() == before
    assert (folder / "train/2/fresh.png").read_bytes() == other


# ---- refusals: the table's status and code, nothing stored ---------------------------------


def big_picture() -> bytes:
    buffer = io.BytesIO()
    Image.new("1", (5000, 4000), 1).save(buffer, "PNG")  # 20 megapixels in a few kB
    return buffer.getvalue()


REFUSED = [
    # (what, label, request kwargs, the error type)
    ("an unknown label", "x", png(drawn()), UnknownLabelError),
    ("a label that is a path", "../../etc", png(drawn()), UnknownLabelError),
    ("a label near a class", " 3", png(drawn()), UnknownLabelError),
    ("no label", None, png(drawn()), InvalidRequestError),
    ("not an image", "3", png(b"hello, I am text"), UnsupportedImageError),
    ("a truncated PNG", "3", png(drawn()[:200]), UnreadableImageError),
    ("no ink", "3", png(drawn(ink=False)), EmptyImageError),
    ("too many pixels", "3", png(big_picture()), ImageTooLargeError),
    ("JSON pixels", "3", dict(json={"pixels": [[0] * 28] * 28}), UnsupportedMediaTypeError),
    ("no content type", "3", dict(content=drawn()), UnsupportedMediaTypeError),
]


@pytest.mark.parametrize("what,label,kwargs,kind", REFUSED, ids=[r[0] for r in REFUSED])
def test_refusals_answer_the_table_and_store_nothing(client, folder, seen, what, label, kwargs, kind):
    params = {} if label is None else {"label": label}
    r = client.post("/api/collect", params=params, **kwargs)
    assert [type(e) for e in seen] == [kind], (what, r.text)  # raised as exactly this type
    status, code = ERRORS[kind]
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert 400 <= r.status_code < 500 and "Traceback" not in r.text
    assert stored(folder) == []
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize("what,kwargs,status,code", [
    ("an empty body", png(b""), 400, "bad_request"),
    ("an empty file", dict(files={"file": ("a.png", b"", "image/png")}), 400, "bad_request"),
    ("multipart without a file", dict(files={"other": ("a.png", drawn(), "image/png")}), 422, "bad_request"),
    ("a body over the limit", png(b"\0" * (MAX_BODY_BYTES + 1)), 413, "too_large"),
], ids=lambda v: v if isinstance(v, str) and " " in v else "")
def test_hostile_bodies_get_a_4xx(client, folder, what, kwargs, status, code):
    r = client.post("/api/collect", params={"label": "3"}, **kwargs)
    assert (r.status_code, r.json()["error"]) == (status, code), (what, r.text)
    assert stored(folder) == []


def test_past_its_limit_the_server_stores_nothing_more(client, folder):
    collector = client.app.state.collector
    collector.max_files = 2
    for _ in range(2):
        assert client.post("/api/collect", params={"label": "1"}, **png(drawn())).status_code == 201
    r = client.post("/api/collect", params={"label": "1"}, **png(drawn()))
    assert (r.status_code, r.json()["error"]) == (507, "collection_full"), r.text
    assert "limit of 2 images" in r.json()["detail"]
    assert len(stored(folder)) == 2
    collector.max_files, collector.max_bytes = 100, collector.bytes + 10  # bytes count too
    r = client.post("/api/collect", params={"label": "1"}, **png(drawn()))
    assert r.status_code == 507 and len(stored(folder)) == 2
    # a refused image is not counted: the limit is of what was stored
    collector.max_bytes = 1 << 30
    for _ in range(3):
        client.post("/api/collect", params={"label": "1"}, **png(b"not an image"))
    assert collector.files == 2


def test_a_folder_that_becomes_unwritable_is_a_507_with_nothing_half_written(client, folder):
    client.post("/api/collect", params={"label": "4"}, **png(drawn()))
    (folder / "train" / "8").write_text("a file where the class's folder should be")
    r = client.post("/api/collect", params={"label": "8"}, **png(drawn()))
    assert (r.status_code, r.json()["error"]) == (507, "cannot_store"), r.text
    assert r.json()["detail"] == "cannot store the image in train/8/: not a folder; nothing was stored"
    assert client.app.state.collector.files == 1  # the failed store is not counted
    assert client.post("/api/collect", params={"label": "4"}, **png(drawn())).status_code == 201


def test_a_full_disk_is_a_507_and_leaves_no_temporary_file(client, folder, monkeypatch):
    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("mnistlab.fileio.os.link", full)  # the last step of a store
    r = client.post("/api/collect", params={"label": "6"}, **png(drawn()))
    assert (r.status_code, r.json()["error"]) == (507, "cannot_store"), r.text
    assert r.json()["detail"] == "cannot store the image in train/6/: the disk is full; nothing was stored"
    assert stored(folder) == []  # not even the temporary file


def test_every_collect_error_type_is_met_by_a_request():
    met = {UnknownLabelError, CollectionFullError, StorageError}  # above, each by a request
    assert set(COLLECT_ONLY) == met


# ---- off by default; the page ----------------------------------------------------------------


def test_off_by_default_the_route_is_absent_and_the_page_offers_nothing(predictor, tmp_path):
    with TestClient(create_app(predictor)) as c:
        r = c.post("/api/collect", params={"label": "3"}, **png(drawn()))
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        assert "data-collect" not in c.get("/").text.split("<body", 1)[1].split(">", 1)[0]
        assert "/api/collect" not in c.get("/openapi.json").json()["paths"]
    assert not any(tmp_path.iterdir())


def test_when_on_the_page_names_the_folder_and_the_schema_the_classes(client, folder):
    body_tag = "<body" + client.get("/").text.split("<body", 1)[1].split(">", 1)[0] + ">"
    assert body_tag == f'<body data-collect="{folder / "train"}">'
    operation = client.get("/openapi.json").json()["paths"]["/api/collect"]["post"]
    label = next(p for p in operation["parameters"] if p["name"] == "label")
    assert label["required"] and label["schema"]["enum"] == [str(i) for i in range(10)]
    assert set(operation["responses"]) == {"201", "400", "408", "413", "415", "422", "507"}
    assert "application/json" not in operation["requestBody"]["content"]


def test_the_folder_shown_is_escaped_in_the_page(predictor, tmp_path):
    folder = tmp_path / 'a "quoted" <folder>'
    with TestClient(create_app(predictor, collect=folder)) as c:
        assert 'data-collect="' + str(folder / "train").replace('"', "&quot;").replace(
            "<", "&lt;").replace(">", "&gt;") + '"' in c.get("/").text


# ---- at startup: the folder and the class names --------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "a/b", "..\\x", "c:", "tab\there",
                                  " padded", "x" * 256])
def test_class_names_that_are_no_plain_folder_name_are_refused_at_startup(predictor, tmp_path, name):
    assert folder_problem(name)

    class Other:
        info = {**predictor.info, "class_names": ["ok", name]}

    with pytest.raises(MnistlabError, match="cannot name a folder") as refused:
        create_app(Other(), collect=tmp_path / "c")
    assert "\n" not in str(refused.value)


def test_letters_and_unicode_are_classes_like_digits(tmp_path):
    collector = Collector(tmp_path, ["a", "B", "ß", "étoile", "10"])
    assert collector.label("ß") == "ß" and all(folder_problem(n) is None for n in collector.classes)
    assert collector.store("étoile", drawn(), ".png").startswith("train/étoile/")
    with pytest.raises(MnistlabError, match="repeat"):
        Collector(tmp_path, ["a", "b", "a"])


def test_created_if_missing_and_an_unwritable_folder_is_refused_at_startup(predictor, tmp_path):
    create_app(predictor, collect=tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper" / "train").is_dir()
    assert list((tmp_path / "new" / "deeper" / "train").iterdir()) == []  # no class folder yet
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(MnistlabError, match="cannot create the folder .*: Not a directory"):
        create_app(predictor, collect=blocker)


def test_a_folder_where_no_file_can_be_made_is_refused_at_startup(predictor, tmp_path,
                                                                  monkeypatch):
    def no_links(*args):  # a file system without hard links (FAT), or one gone read-only
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr("mnistlab.fileio.os.link", no_links)
    with pytest.raises(MnistlabError, match="cannot write into .*: Operation not permitted"):
        create_app(predictor, collect=tmp_path / "c")
    assert list((tmp_path / "c" / "train").iterdir()) == []  # the probe left nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any folder")
def test_a_read_only_folder_is_refused_at_startup(predictor, tmp_path):
    (tmp_path / "ro" / "train").mkdir(parents=True)
    (tmp_path / "ro" / "train").chmod(0o500)
    try:
        with pytest.raises(MnistlabError, match="cannot write into"):
            create_app(predictor, collect=tmp_path / "ro")
    finally:
        (tmp_path / "ro" / "train").chmod(0o700)


def test_serve_refuses_an_unwritable_collect_folder_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = subprocess.run([sys.executable, "-m", "mnistlab", "serve", "--port", free_port(),
                          "--collect", blocker / "sub"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("mnistlab: error: --collect ")
    assert "cannot create the folder" in out.stderr


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def post(url: str, data: bytes) -> int:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "image/png"})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code


def test_several_workers_write_into_one_folder(tmp_path):
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mnistlab", "serve", "--port", port,
                               "--workers", "2", "--collect", tmp_path / "c"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # a bound on the start, not a timing
        while True:
            try:
                with urllib.request.urlopen(base + "/api/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        data = drawn()
        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(lambda i: post(f"{base}/api/collect?label={i % 3}", data),
                                     range(36)))
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert statuses == [201] * 36, output
    files = stored(tmp_path / "c")
    assert len(files) == 36 and all(f.read_bytes() == data for f in files)
    assert sorted({f.parent.name for f in files}) == ["0", "1", "2"]
    assert f"storing the page's corrections in {tmp_path / 'c' / 'train'}/<class>/" in output
    assert "Traceback" not in output, output
