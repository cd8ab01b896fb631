import os
import tempfile

import pytest
import pyro

# the record of programs this user trained from (store/trust.py) lives in the test session's own folder, never in
# the user's ~/.config; set before any test runs so that the tests' subprocesses inherit it too
_TRUST_DIR = tempfile.mkdtemp(prefix="pyro_vae-trust-")
os.environ["PYRO_VAE_TRUST_FILE"] = os.path.join(_TRUST_DIR, "trusted_programs.json")


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Tests that use the global param store (user models) start from a clean one."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
