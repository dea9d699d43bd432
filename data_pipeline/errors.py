"""The one user-facing error type of blockmix, at the bottom of the layers so every package can
raise it (``train.errors`` re-exports it)."""


class BlockmixError(Exception):
    """A problem with the user's input: the CLI prints its one-line message and exits 2.

    Messages name the file or field at fault and what to do about it.
    """
