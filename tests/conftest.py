"""Shared fixtures: one moto S3 server on loopback and one local Ray instance per test session."""
import os
import re

import pytest

FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing-key-id",
    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Set before anything starts: Ray's workers inherit the environment of the moment the cluster starts.
os.environ.update(FAKE_CREDENTIALS)


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a real S3 endpoint (moto's threaded server) on 127.0.0.1; credentials come from the environment."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    """A fresh, empty bucket per test; returns its name."""
    import boto3

    name = "t-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance shared by every test that needs it (its own, even if a `ray start` head is running)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
