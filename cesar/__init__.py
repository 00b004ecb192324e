"""cesar: the runtime behind the CESAR API's operations (connection layer, embedded stack, ...)."""

from cesar import _moved

__version__ = "0.1.0"

_moved.install()
