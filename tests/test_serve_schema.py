"""The HTTP API against its own OpenAPI schema, with Schemathesis: requests generated from the
schema (valid ones, and invalid ones: wrong types, wrong methods, missing fields, odd media
types) sent to the app in-process, the shipped model behind it. Every answer must be no 5xx,
a status code the schema declares, and a body that matches the schema declared for it.

A request can be valid by the schema and still be refused: an image with no ink (422
`empty_image`), bytes that are no picture (422), an empty body (400). JSON Schema cannot say
"a picture with a digit in it", so those documented refusals count as accepting valid data.
The app collects corrections (`--collect`, into a temporary folder), so that `POST
/api/collect` is tested too.

    MNISTLAB_SCHEMATHESIS_EXAMPLES=1500 pytest -s tests/test_serve_schema.py   # a longer run

With -s it ends by printing how many requests got each status.
"""

import os
import shutil
import tempfile
from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from mnistlab.inference.predictor import Predictor
from mnistlab.serve import create_app

EXAMPLES = int(os.environ.get("MNISTLAB_SCHEMATHESIS_EXAMPLES", "150"))  # per operation

# BMP is sent as the raw bytes Hypothesis draws, like application/octet-stream
schemathesis.serializer.alias("image/bmp", "application/octet-stream")
CONFIG = SchemathesisConfig.from_dict({
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "400", "413", "422"]}},
})
COLLECTED = tempfile.mkdtemp(prefix="mnistlab-schema-")  # removed when the module ends
schema = schemathesis.openapi.from_asgi(
    "/openapi.json", create_app(Predictor.load("default"), collect=COLLECTED), config=CONFIG)


STATUSES: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield
    shutil.rmtree(COLLECTED, ignore_errors=True)
    print(f"\n{sum(STATUSES.values()):,} requests:", ", ".join(
        f"{k} -> {n:,}" for k, n in sorted(STATUSES.items())))


@schema.parametrize()
@settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_api_answers_as_its_schema_says(case):
    response = case.call_and_validate()
    STATUSES[f"{case.method} {case.path} {response.status_code}"] += 1


# ---- what it found -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    from fastapi.testclient import TestClient

    with TestClient(schema.app) as c:
        yield c


def test_top_k_that_isdigit_but_is_no_number(client):
    # before: '²'.isdigit() is true, int('²') raised, and the answer was a 500
    r = client.post("/api/predict?top_k=²", json={"pixels": [[0] * 28] * 28})
    assert r.status_code == 422 and "top_k" in r.json()["detail"]


@pytest.mark.parametrize("value", [True, "255", None, [255], {"v": 255}])
def test_pixels_must_be_numbers(client, value):
    # before: numpy read true as 1 and "255" as 255, and the digit was guessed
    pixels = [[0] * 28 for _ in range(28)]
    for y in range(4, 24):
        pixels[y][14] = value
    r = client.post("/api/predict", json={"pixels": pixels})
    assert r.status_code == 422 and r.json()["error"] == "bad_pixels"
