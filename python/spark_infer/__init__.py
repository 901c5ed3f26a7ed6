"""spark-infer: CPU inference for Gemma-family models and their Spark Transformer variants."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("spark-infer")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
