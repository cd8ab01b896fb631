import os
import tempfile

import pytest
import pyro
import torch

# the record of programs this user trained from (store/trust.py) lives in the test session's own folder, never in
# the user's ~/.config; set before any test runs so that the tests' subprocesses inherit it too
_TRUST_DIR = tempfile.mkdtemp(prefix="pyro_vae-trust-")
os.environ["PYRO_VAE_TRUST_FILE"] = os.path.join(_TRUST_DIR, "trusted_programs.json")

# the tests' models are tiny: a second intra-op thread buys nothing there, and where another process holds a core
# (a shared or CI machine) torch's default of one thread per core makes every step wait for it. One thread for this
# process and, through the environment, for the CLI runs it starts; a user's OMP_NUM_THREADS still decides
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Tests that use the global param store (user models) start from a clean one."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
