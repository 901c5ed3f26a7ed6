"""spark-infer: CPU inference for Gemma-family models and their Spark Transformer variants.

    >>> import spark_infer
    >>> model = spark_infer.load()                  # Gemma 3 270M, the embedded default
    >>> model.generate("The capital of France is", max_new_tokens=8, temperature=0)

Layout: the runtime is this folder's modules (``model``: load and generate over
``_core.Engine``; ``completion``, ``sampling``, ``tokenizer``, ``config``, ``fileformat`` (the
engine file's writer), ``models`` (the named models and their cache), ``errors``, ``limits``,
``reference`` (the numpy reference), ``random_model``, ``cli``) and ``weights/`` (the weight
types' layouts, encoders and decoders, which ``fileformat`` writes through; numpy only); the
subpackages hang off it and the runtime imports none of them at module level: ``convert/`` (foreign checkpoints -> engine
file; imported lazily by ``models`` and ``cli`` to build a named model), ``serve/`` (HTTP, needs
``[server]``), ``train/`` (PyTorch, needs ``[train]``), ``bench/`` (``spark-infer bench``) and
``data/`` (shipped texts). Data flows one way: convert -> engine file -> engine -> generate.
"""

from importlib.metadata import PackageNotFoundError, version

from spark_infer.config import ModelConfig
from spark_infer.errors import ContextLengthError, FormatError, ModelBusyError, ModelClosedError
from spark_infer.model import GenerationStats, Model, load
from spark_infer.sampling import SamplingParams

try:
    __version__ = version("spark-infer")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+source"

__all__ = ["load", "Model", "ModelConfig", "SamplingParams", "GenerationStats", "FormatError",
           "ContextLengthError", "ModelBusyError", "ModelClosedError", "__version__"]
