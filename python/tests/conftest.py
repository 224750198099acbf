"""Fixtures for the Python SDK tests: an Apiary on a local directory and on the S3 server
that scripts/test starts."""

import os
import uuid

import pytest

from apiary import Apiary


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    # Default storage and node state go under the user's data dir: keep them in the test's.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for k in ("APIARY_STORAGE", "APIARY_CONFIG", "APIARY_STATE_DIR"):
        monkeypatch.delenv(k, raising=False)


def s3_storage():
    endpoint = os.environ.get("APIARY_TEST_S3_ENDPOINT")
    if not endpoint:
        if os.environ.get("APIARY_REQUIRE_S3"):
            pytest.fail("APIARY_REQUIRE_S3 is set but APIARY_TEST_S3_ENDPOINT is not")
        pytest.skip("no S3 server (scripts/test starts one)")
    bucket = os.environ.get("APIARY_TEST_S3_BUCKET", "apiary-test")
    options = dict(
        endpoint=endpoint,
        access_key_id="test",
        secret_access_key="test",
        region="us-east-1",
    )
    return f"s3://{bucket}/py-{uuid.uuid4().hex}", options


@pytest.fixture(params=["local", "s3"])
def ap(request, tmp_path):
    """A started Apiary on each kind of meadow."""
    if request.param == "local":
        node = Apiary("test", storage=str(tmp_path / "meadow"))
    else:
        storage, options = s3_storage()
        node = Apiary("test", storage=storage, **options)
    node.start()
    yield node
    node.shutdown()
