"""The transport-channel conformance kit, run against ``mtls`` with both minimum versions."""

from __future__ import annotations

import pytest
from trustflow_core.channel import TransportChannel
from trustflow_core.testing.transport import TransportChannelConformance

from trustflow_channel_mtls.channel import MtlsChannel


class TestMtlsConformance(TransportChannelConformance):
    @pytest.fixture
    def channel(self) -> TransportChannel:
        return MtlsChannel.from_settings({})


class TestMtlsTls13OnlyConformance(TransportChannelConformance):
    @pytest.fixture
    def channel(self) -> TransportChannel:
        return MtlsChannel.from_settings({"min_version": "TLSv1.3"})
