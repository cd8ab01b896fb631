import pytest
import pyro


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    """Tests that use the global param store (user models) start from a clean one."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()
