import pytest
import torch

from nasdd.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    """The tiny real dataset (scikit-learn's 8x8 digits) used by fast tests."""
    return load_dataset("digits")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
