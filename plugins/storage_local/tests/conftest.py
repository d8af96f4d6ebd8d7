from __future__ import annotations

pytest_plugins = ["trustflow_core.testing.fixtures"]
