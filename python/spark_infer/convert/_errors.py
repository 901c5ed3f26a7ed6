"""The one exception type raised by the converters."""


class ConversionError(ValueError):
    """A source checkpoint cannot be converted: unsupported architecture, a missing or
    mis-shaped tensor, a missing config field, or a truncated/corrupt file.  The message names
    the offending tensor, field or file."""
