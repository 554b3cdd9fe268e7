"""The one user-facing error type: the CLI prints its message on one line and exits with code 2."""

from collections.abc import Callable, Sequence


class NasddError(Exception):
    """Bad input or an unrecoverable condition the user can fix; the message says what and how.

    The library describes the problem in its own words: a setting the message names is written `name`
    (backticked, the parameter's name) and listed in `params`. The command line shows each one as the flag
    that set it (`--name`, see `render`), so no library message needs to know the flags.
    """

    def __init__(self, message: str, *, params: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)  # kept through pickling (BaseException pickles __dict__)

    def render(self, flag: Callable[[str], str | None]) -> str:
        """The message with every `param` in `params` replaced by `flag(param)` where that is not None."""
        text = str(self)
        for param in self.params:
            if shown := flag(param):
                text = text.replace(f"`{param}`", shown)
        return text


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> NasddError:
    """An error for an unknown registry key that lists the valid ones."""
    plural = f"{kind[:-1]}ies" if kind.endswith("y") else f"{kind}s"
    return NasddError(f"unknown {kind} {name!r}; valid {plural}: {', '.join(sorted(valid))}")
