"""Every file and folder name of a run, in one place (torch-free: the command line imports it at start-up).

`RunLayout(root)` names what lives in one command's output folder `root`:

    root/proxy.pt, root/proxy.json           a proxy (`nasdd distill`, `nasdd import-proxy`)
    root/study.db                            a search's Optuna storage (`nasdd search`)
    root/results.db                          a validation's trainings (`nasdd validate`)
    root/peers/{method}-ipc{ipc}/            the coreset peers a validation distils (each a proxy folder)
    root/ipc{ipc}/                           one validation per ipc of the matched-cost audit
    root/proxies/{method}-ipc{ipc}/          `nasdd run`: its proxies (each a proxy folder),
    root/search/, root/validate/             its search and its validation (each a folder as above)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar


def proxy_name(method: str, ipc: int) -> str:
    """`dm-ipc10`: the folder of `method`'s proxy at `ipc` images per class."""
    return f"{method}-ipc{ipc}"


@dataclass(frozen=True)
class RunLayout:
    """The names inside the output folder `root` (a `str` is accepted and made a `Path`)."""

    root: Path

    PROXY_DATA: ClassVar[str] = "proxy.pt"
    PROXY_SIDECAR: ClassVar[str] = "proxy.json"
    STUDY_DB: ClassVar[str] = "study.db"
    RESULTS_DB: ClassVar[str] = "results.db"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def proxy_data(self) -> Path:
        """The proxy's tensors."""
        return self.root / self.PROXY_DATA

    @property
    def sidecar(self) -> Path:
        """The proxy's JSON sidecar (provenance, checksum, shapes)."""
        return self.root / self.PROXY_SIDECAR

    def holds_proxy(self) -> bool:
        """Whether a proxy was saved here (its sidecar is written last)."""
        return self.sidecar.is_file()

    @property
    def study_db(self) -> Path:
        return self.root / self.STUDY_DB

    @property
    def results_db(self) -> Path:
        return self.root / self.RESULTS_DB

    def peer(self, method: str, ipc: int) -> Path:
        """A validation's coreset peer `method` at `ipc`."""
        return self.root / "peers" / proxy_name(method, ipc)

    def audit_at(self, ipc: int) -> Path:
        """The matched-cost audit's validation at `ipc`."""
        return self.root / f"ipc{ipc}"

    def proxy(self, method: str, ipc: int) -> Path:
        """`nasdd run`'s proxy of `method` at `ipc`."""
        return self.root / "proxies" / proxy_name(method, ipc)

    @property
    def search(self) -> Path:
        """`nasdd run`'s search folder."""
        return self.root / "search"

    @property
    def validate(self) -> Path:
        """`nasdd run`'s validation folder."""
        return self.root / "validate"
