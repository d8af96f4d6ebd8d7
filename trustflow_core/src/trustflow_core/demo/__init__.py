"""``trustflow demo``: end-to-end scenarios on loopback with temporary keys, and the example
apps they run (``teeapp``, ``interact_app``, ``psi_app``). Composes the roles; nothing but the
core plugin's command registration imports it."""
