pytest_plugins = ["trustflow_core.testing.fixtures"]
