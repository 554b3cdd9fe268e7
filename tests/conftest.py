import subprocess

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


# Every PostgreSQL URL of the suite carries this password (the CI server trusts loopback and ignores it), and
# `_no_password_leaks` fails any test that lets it reach a file under its tmp_path or a command's output.
TEST_PASSWORD = "nasdd-Test-Secret-4b1d"


@pytest.fixture
def test_password():
    return TEST_PASSWORD


@pytest.fixture
def postgres_url():
    """A PostgreSQL storage URL from NASDD_TEST_POSTGRES (set by .ci/run), with `TEST_PASSWORD` added when it
    names none; skips when no server is reachable."""
    import os

    url = os.environ.get("NASDD_TEST_POSTGRES")
    if not url:
        pytest.skip('no PostgreSQL server: set NASDD_TEST_POSTGRES (`eval "$(bash .ci/postgres.sh start)"`)')
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(url)
    if parsed.password is None:
        url = parsed.set(password=TEST_PASSWORD).render_as_string(hide_password=False)
    try:
        sqlalchemy.create_engine(url).connect().close()
    except Exception as exc:  # driver missing or server down
        pytest.skip(f"PostgreSQL at {parsed.render_as_string()} is not reachable: {exc}")
    return url


def _leaks(text, where):
    if text and TEST_PASSWORD in (text if isinstance(text, str) else text.decode(errors="replace")):
        pytest.fail(f"the test password leaked into {where}")


@pytest.fixture(autouse=True)
def _no_password_leaks(request, monkeypatch):
    """Fail a test whose commands print the test password (captured output read by the test, captured by
    pytest, or returned by a subprocess) or write it into any file under its tmp_path."""
    real = subprocess.Popen.communicate

    def communicate(self, *args, **kwargs):
        out, err = real(self, *args, **kwargs)
        _leaks(out, f"the stdout of {self.args}")
        _leaks(err, f"the stderr of {self.args}")
        return out, err

    monkeypatch.setattr(subprocess.Popen, "communicate", communicate)
    for name in ("capsys", "capfd"):
        if name in request.fixturenames:
            cap = request.getfixturevalue(name)
            read = cap.readouterr

            def checked(read=read):
                got = read()
                _leaks(got.out + got.err, "captured output")
                return got

            cap.readouterr = checked
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        for path in folder.rglob("*"):
            if path.is_file() and TEST_PASSWORD.encode() in path.read_bytes():
                pytest.fail(f"the test password leaked into {path}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Output pytest captured (not read by the test) must not hold the test password either."""
    outcome = yield
    report = outcome.get_result()
    if call.when != "teardown" and report.passed and TEST_PASSWORD in report.capstdout + report.capstderr:
        report.outcome = "failed"
        report.longrepr = f"the test password leaked into the captured output of {item.nodeid}"
