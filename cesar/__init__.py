"""cesar: the runtime behind the CESAR API's operations (connection layer, embedded stack, ...)."""

__version__ = "0.1.0"
