import pytest

from nasdd.errors import NasddError
from nasdd.validate.peers import resolve_peers


def test_all_is_every_cheap_peer_and_stack_is_named_explicitly():
    every = [p.name for p in resolve_peers("all")]
    assert "stack" not in every and {"random", "early", "snip"} <= set(every)
    assert [p.name for p in resolve_peers(None)] == every
    assert [p.name for p in resolve_peers("all,stack")] == every + ["stack"]
    assert [p.name for p in resolve_peers("stack,early,early")] == ["stack", "early"]
    with pytest.raises(NasddError, match="valid"):
        resolve_peers("stak")
