"""The memrag version, stamped into every saved compressor and store."""

__version__ = "0.1.0"
