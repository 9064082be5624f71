"""The package's one exception type.

It lives in the runtime (the layer with the fewest dependencies) so that the
training, export and benchmark stages can raise it too. Messages follow the
form "expected X, got Y; try Z". The command-line tools turn it into one line
on stderr and a non-zero exit.
"""


class FcnsegError(Exception):
    """An error caused by the user's input or environment, with a message that says what to do."""
