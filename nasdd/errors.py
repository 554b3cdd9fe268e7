"""The one user-facing error type: the CLI prints its message on one line and exits with code 2."""


class NasddError(Exception):
    """Bad input or an unrecoverable condition the user can fix; the message says what and how."""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> NasddError:
    """An error for an unknown registry key that lists the valid ones."""
    plural = f"{kind[:-1]}ies" if kind.endswith("y") else f"{kind}s"
    return NasddError(f"unknown {kind} {name!r}; valid {plural}: {', '.join(sorted(valid))}")
