"""The one exception type for user mistakes (and the range of seeds every entry point accepts).

Anything the user can fix (a bad path, a bad flag, data that is too small) raises `UserError`
with one line that names the problem and the fix. The CLI prints that line and exits with
status 2; a raw traceback is reserved for bugs in dlm-jax itself.
"""

SEED_LIMIT = 2**32  # seeds become uint32 on the device: 0 .. 2**32 - 1


class UserError(Exception):
    """A mistake in the user's input; the message is one line naming the problem and the fix."""


def flag(keyword: str) -> str:
    """The command-line flag of a Python keyword (gen_length -> --gen-length), for messages that
    name what a command-line user typed."""
    return "--" + keyword.replace("_", "-")
