"""``trustflow demo``: end-to-end scenarios on loopback with temporary keys."""
