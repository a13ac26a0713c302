"""Fixtures of the security tests. `collector` (a real collector on a real nats-server, from
tests/collector/conftest.py) is reused as it is, with its helpers module on the path."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "collector"))  # helpers_collector

from collector.conftest import collector  # noqa: E402, F401
