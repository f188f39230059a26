"""Test-wide setup. The environment is left as it is: importing the gateway configures nothing,
and each test configures this process itself, through the bootstrap, with settings of its own
(tests/unit/conftest.py, tests/integration/system.py). The processes the integration tests
start are configured the way users configure them: by their environment.
"""

# Every log line written during the suite is checked for phone numbers and secrets.
pytest_plugins = ("tests.log_audit",)
