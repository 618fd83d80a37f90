"""The Docker tests' engine: :class:`berth.private_docker.PrivateDocker` (the demo and the benchmark use it too),
with the ``bt`` test prefix on everything it names."""
from __future__ import annotations

from typing import Optional

from berth.private_docker import DOCKER_CLI, IMAGE, PAGE, PrivateDocker, missing

DockerHost = PrivateDocker
__all__ = ["DOCKER_CLI", "IMAGE", "PAGE", "DockerHost", "available"]


def available() -> Optional[str]:
    """None when the Docker tests can run here, else why they are skipped."""
    return missing()
