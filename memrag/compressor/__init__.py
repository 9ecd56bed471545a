"""The ICAE compressor: text -> memory slots, and the frozen decoder that reads them."""

from memrag.compressor.config import CompressorConfig
from memrag.compressor.model import Compressor, CompressorMismatchError

__all__ = ["Compressor", "CompressorConfig", "CompressorMismatchError"]
