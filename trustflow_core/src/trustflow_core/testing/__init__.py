"""Conformance test kits for backend authors (run them with ``trustflow-core[test]``).

Subclass a kit in your plugin's tests and override its abstract fixtures::

    from trustflow_core.testing.storage import StorageConformance

    class TestMyStorageConformance(StorageConformance):
        @pytest.fixture
        async def storage(self, tmp_path): ...

Kit class names do not start with ``Test`` so pytest collects them only through subclasses.

Importing this package needs no pytest: the helpers for benchmarks and scripts
(:mod:`.support`, :mod:`.certs`, :mod:`.databases`) work with ``trustflow-core`` alone; the
kits and :mod:`.fixtures` import pytest themselves.
"""

from __future__ import annotations

try:
    import pytest
except ImportError:  # not under pytest: no assertion rewriting to set up
    pass
else:
    for _kit in (
        "attestation",
        "channel",
        "keyexchange",
        "storage",
        "transport",
        "fixtures",
        "races",
    ):
        pytest.register_assert_rewrite(f"trustflow_core.testing.{_kit}")
