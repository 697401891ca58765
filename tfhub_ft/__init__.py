"""tfhub_ft: fine-tune TF Hub image feature vectors with Keras 3.

The public names below are imported on first use (PEP 562), so that
`import tfhub_ft` and the `tfhub_ft` command start without TensorFlow: the
command turns TensorFlow's start-up logging down before it is imported.
"""

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_EXPORTS = {
    "ArrayBudget": "tfhub_ft.arrays",
    "FileArray": "tfhub_ft.arrays",
    "BackboneSplit": "tfhub_ft.backbone",
    "HubBackbone": "tfhub_ft.backbone",
    "HubModuleError": "tfhub_ft.backbone",
    "resolve_handle": "tfhub_ft.backbone",
    "Block": "tfhub_ft.blocks",
    "group_into_blocks": "tfhub_ft.blocks",
    "top_blocks": "tfhub_ft.blocks",
    "DEFAULT_HUB_URL": "tfhub_ft.config",
    "FineTuneConfig": "tfhub_ft.config",
    "ImageSet": "tfhub_ft.data",
    "load_images": "tfhub_ft.data",
    "stratified_split": "tfhub_ft.data",
    "get_strategy": "tfhub_ft.distribution",
    "export_saved_model": "tfhub_ft.export",
    "read_labels": "tfhub_ft.export",
    "export_backbone": "tfhub_ft.hub_export",
    "LearningRateFinding": "tfhub_ft.lr_finder",
    "ImageClassifier": "tfhub_ft.model",
    "build_classifier": "tfhub_ft.model",
    "write_report": "tfhub_ft.report",
    "FineTuner": "tfhub_ft.tuner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tfhub_ft' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
