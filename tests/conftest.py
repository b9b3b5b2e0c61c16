"""Shared fixtures for conv's end-to-end tests."""

from __future__ import annotations

import pytest

from convcore.testing import make_sample_dir


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    return make_sample_dir(str(tmp_path_factory.mktemp("sample") / "root"))
