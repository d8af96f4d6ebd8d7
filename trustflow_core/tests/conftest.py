pytest_plugins = ["trustflow_core.testing.fixtures", "trustflow_core.testing.cm_fixtures"]
