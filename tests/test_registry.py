import pytest

from nasdd.errors import NasddError, unknown_name
from nasdd.registry import Registry


def test_registry():
    reg: Registry[int] = Registry("widget")

    @reg.register("b")
    def b() -> int:
        return 2

    reg.register("a")(1)
    assert reg.get("a") == 1 and reg.get("b")() == 2
    assert reg.names() == ["b", "a"] and list(reg) == ["b", "a"] and "a" in reg and "c" not in reg
    assert reg.items() == [("b", b), ("a", 1)]
    with pytest.raises(NasddError, match="unknown widget 'c'; valid widgets: a, b"):
        reg.get("c")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(3)


def test_unknown_name_plurals():
    assert str(unknown_name("model family", "x", ["b", "a"])) == "unknown model family 'x'; valid model families: a, b"
    assert str(unknown_name("dataset", "x", ["d"])) == "unknown dataset 'x'; valid datasets: d"
