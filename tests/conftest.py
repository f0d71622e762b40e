import pytest

from tests import reference


def pytest_terminal_summary(terminalreporter):
    if not reference.OBSERVED:
        return
    terminalreporter.section("golden comparisons (max abs err / max |ref| = relative)")
    for name, (err, scale) in sorted(reference.OBSERVED.items()):
        rel = err / scale if scale else 0.0
        terminalreporter.write_line(f"{name:60s} {err:10.3e} / {scale:9.3e} = {rel:9.2e}")


@pytest.fixture(autouse=True)
def _torch_threads():
    # Deterministic-enough and quiet on the 2-core CI machines.
    try:
        import torch
    except ImportError:
        yield
        return
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_engines():
    """The session's tiny random-weight engine directory (tests/tiny_engines.py) and its weight seed."""
    from tests.tiny_engines import SEED, tiny_engine_dir

    return tiny_engine_dir()[0], SEED
