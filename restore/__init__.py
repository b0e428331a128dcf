"""restore: batch restoration of damaged photo and film archives."""

__version__ = "0.9.0"
