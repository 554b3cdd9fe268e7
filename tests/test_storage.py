import pytest
import sqlalchemy.exc

from nasdd import storage


def test_workers_racing_to_create_the_tables_retry(tmp_path, monkeypatch):
    real, calls = storage._RDBStorage, []

    def racing(url, **kwargs):  # the first attempt loses the race to another worker, as on SQLite
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(storage, "_RDBStorage", racing)
    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert isinstance(storage.open_storage(url), real) and len(calls) == 2


def test_other_database_errors_are_not_retried(tmp_path, monkeypatch):
    calls = []

    def locked(url, **kwargs):
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(storage, "_RDBStorage", locked)
    with pytest.raises(Exception, match="database is locked"):
        storage.open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    assert len(calls) == 1
