import pytest
import torch

from nasdd.data import load_dataset
from nasdd.utils import set_quiet


@pytest.fixture(scope="session")
def digits():
    """The tiny real dataset (scikit-learn's 8x8 digits) used by fast tests."""
    return load_dataset("digits")


@pytest.fixture(scope="module")
def proxy(digits, tmp_path_factory):
    """A random-subset proxy of digits (5 images per class), saved like `nasdd distill` saves it."""
    from nasdd.distill import distill

    folder = tmp_path_factory.mktemp("proxy")
    distill(digits, "random", ipc=5, seed=0).save(folder)
    return folder


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    set_quiet(False)  # `--quiet` in a CLI test must not silence the next test's progress bars


@pytest.fixture
def postgres_url():
    """A PostgreSQL storage URL from NASDD_TEST_POSTGRES (set by .ci/run); skips when none is reachable."""
    import os

    url = os.environ.get("NASDD_TEST_POSTGRES")
    if not url:
        pytest.skip('no PostgreSQL server: set NASDD_TEST_POSTGRES (`eval "$(bash .ci/postgres.sh start)"`)')
    import sqlalchemy

    try:
        sqlalchemy.create_engine(url).connect().close()
    except Exception as exc:  # driver missing or server down
        pytest.skip(f"PostgreSQL at {url} is not reachable: {exc}")
    return url
