"""The one exception every wire parser raises on bad input."""


class WireError(ValueError):
    """A datagram that does not follow the format; the message says which field and why."""
