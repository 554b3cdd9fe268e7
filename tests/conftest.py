import pytest
import torch

from nasdd.data import load_dataset
from nasdd.utils import set_quiet


@pytest.fixture(scope="session")
def digits():
    """The tiny real dataset (scikit-learn's 8x8 digits) used by fast tests."""
    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    set_quiet(False)  # `--quiet` in a CLI test must not silence the next test's progress bars
