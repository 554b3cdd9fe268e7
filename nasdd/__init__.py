"""nasdd: neural architecture search on distilled proxy datasets, with an audit of ranking fidelity."""

__version__ = "0.1.0"

from nasdd.errors import NasddError  # noqa: E402

__all__ = ["NasddError", "__version__"]
