"""Shared fixtures (helpers live in tests/helpers.py)."""

from pathlib import Path

import pytest

from helpers import smollm2, write_config


@pytest.fixture
def smollm2_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, [smollm2()])
