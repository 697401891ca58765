"""tfhub_ft: fine-tune TF Hub image feature vectors with Keras 3.

The public names below are imported on first use (PEP 562), so that
`import tfhub_ft` and the `tfhub_ft` command start without TensorFlow: the
command turns TensorFlow's start-up logging down before it is imported.
The first public name used imports TensorFlow, if nothing has yet, without
its start-up lines (`native_stderr.import_tensorflow_quietly`; they go to
the `tfhub_ft` logger at DEBUG). TF_CPP_MIN_LOG_LEVEL=0 keeps them.

Importing the package sets TF_CPU_ALLOCATOR_USE_BFC=true unless it is set
(`cpu_memory`): TensorFlow then pools its CPU memory, which made the
command 1.4-1.8x faster on a 2-core VM, for 43-266 MB more peak memory.
"""

import importlib
import logging
import os

from tfhub_ft import cpu_memory

__version__ = "0.1.0"

# Before TensorFlow sets up its devices, or it is too late (see cpu_memory).
cpu_memory.request_pooling()

# Public name -> the module that defines it: what README documents. The
# pieces under them (arrays, blocks, data, cache, report, ...) stay
# importable from their modules.
_EXPORTS = {
    "DEFAULT_HUB_URL": "tfhub_ft.config",
    "FineTuneConfig": "tfhub_ft.config",
    "FineTuner": "tfhub_ft.tuner",
    "HubBackbone": "tfhub_ft.backbone",
    "HubModuleError": "tfhub_ft.backbone",
    "ImageClassifier": "tfhub_ft.model",
    "build_classifier": "tfhub_ft.model",
    "load_images": "tfhub_ft.data",
    "export_saved_model": "tfhub_ft.export",
    "read_labels": "tfhub_ft.export",
    "export_backbone": "tfhub_ft.hub_export",
    "get_strategy": "tfhub_ft.distribution",
}

__all__ = sorted(_EXPORTS)
_WITHOUT_TENSORFLOW = {"tfhub_ft.config"}


def __getattr__(name):
    if name in _EXPORTS:
        # The config needs no TensorFlow: importing it stays instant.
        if (_EXPORTS[name] not in _WITHOUT_TENSORFLOW
                and os.environ.get("TF_CPP_MIN_LOG_LEVEL") != "0"):
            from tfhub_ft import native_stderr
            native_stderr.import_tensorflow_quietly(logging.getLogger(__name__).debug)
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfhub_ft' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
