"""The portmap tests reuse the bridge tests' fixtures (host namespace, IPAM dir, config builder)."""
from tests.bridge.conftest import container, host, ipam_dir, make_conf  # noqa: F401
