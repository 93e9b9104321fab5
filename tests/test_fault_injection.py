"""The suite bites: each deliberate fault of tests/fault_injection.py makes its named tests fail (and they pass
without it). Slow (a copy of the repository and a pytest run per fault): `python -m pytest -m slow
tests/test_fault_injection.py`, or `python tests/fault_injection.py`."""
import pytest
from fault_injection import FAULTS, check


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize('fault', FAULTS, ids=[f.name for f in FAULTS])
def test_fault_is_caught(fault):
    check([fault])
