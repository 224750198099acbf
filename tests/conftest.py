"""Shared fixtures for the end-to-end tests: the apiary binary and meadows to run it on."""

import os
import subprocess
import uuid

import pytest


def apiary_bin():
    path = os.environ.get("APIARY_BIN")
    if not path:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/apiary/target"))
        path = os.path.join(target, "debug", "apiary")
    if not os.path.exists(path):
        pytest.fail(f"apiary binary not found at {path}: run scripts/test (or cargo build)")
    return path


@pytest.fixture
def apiary_binary():
    return apiary_bin()


class Meadow:
    """A meadow URI plus the environment a process needs to reach it."""

    def __init__(self, uri, env, storage_options=None):
        self.uri = uri
        self.env = env
        self.storage_options = storage_options or {}

    def run(self, *args, input=None, check=True):
        proc = subprocess.run(
            [apiary_bin(), "--storage", self.uri, *args],
            input=input,
            capture_output=True,
            env=self.env,
            timeout=300,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"apiary {args} failed: {proc.stderr.decode()}")
        return proc


@pytest.fixture
def local_meadow(tmp_path):
    env = dict(os.environ, APIARY_STATE_DIR=str(tmp_path / "state"))
    return Meadow(str(tmp_path / "meadow"), env)


@pytest.fixture
def s3_meadow(tmp_path):
    endpoint = os.environ.get("APIARY_TEST_S3_ENDPOINT")
    if not endpoint:
        if os.environ.get("APIARY_REQUIRE_S3"):
            pytest.fail("APIARY_REQUIRE_S3 is set but APIARY_TEST_S3_ENDPOINT is not")
        pytest.skip("no S3 server (scripts/test starts one)")
    bucket = os.environ.get("APIARY_TEST_S3_BUCKET", "apiary-test")
    env = dict(
        os.environ,
        APIARY_STATE_DIR=str(tmp_path / "state"),
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_REGION="us-east-1",
    )
    options = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    }
    return Meadow(f"s3://{bucket}/{uuid.uuid4()}", env, options)
