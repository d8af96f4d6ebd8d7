"""Conformance test kits for backend authors (install ``trustflow-core[testing]``).

Subclass a kit in your plugin's tests and override its abstract fixtures::

    from trustflow_core.testing.storage import StorageConformance

    class TestMyStorageConformance(StorageConformance):
        @pytest.fixture
        async def storage(self, tmp_path): ...

Kit class names do not start with ``Test`` so pytest collects them only through subclasses.
"""

from __future__ import annotations

import pytest

for _kit in ("attestation", "channel", "keyexchange", "storage", "transport", "fixtures", "races"):
    pytest.register_assert_rewrite(f"trustflow_core.testing.{_kit}")
