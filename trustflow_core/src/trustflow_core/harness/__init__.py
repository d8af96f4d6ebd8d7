"""Role servers run in-process for tests, benchmarks and the demos: a Data Capsule Proxy in the
current event loop, a Capsule Manager on its own loop in a thread. Composes the roles; no role
and no core module imports it."""
