import subprocess
import sys

from nasdd.arch import ArchSpec


def test_roundtrip_and_hash():
    a = ArchSpec.make("convnet", depth=3, width=64, activation="relu")
    b = ArchSpec.from_json(a.to_json())
    assert a == b and hash(a) == hash(b) and a.key() == b.key()
    assert ArchSpec.make("convnet", width=64, depth=3, activation="relu").key() == a.key()
    assert ArchSpec.make("convnet", depth=2, width=64, activation="relu").key() != a.key()


def test_key_is_stable_across_processes():
    a = ArchSpec.make("cell201", edge_1_0="none", channels=8, widths=[1, 2])
    code = (
        "from nasdd.arch import ArchSpec;"
        "print(ArchSpec.make('cell201', edge_1_0='none', channels=8, widths=[1, 2]).key())"
    )
    out = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    ]
    assert out == [a.key(), a.key()]
