import pytest

from tests.docker.harness import DockerHost, available


@pytest.fixture(scope="module")
def docker_host():
    """One private dockerd + Berth plugin per module: dockerd takes seconds to start."""
    reason = available()
    if reason:
        pytest.skip(reason)
    host = DockerHost.start()
    try:
        yield host
    finally:
        host.stop()
