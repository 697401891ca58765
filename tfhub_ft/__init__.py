"""tfhub_ft: fine-tune TF Hub image feature vectors with Keras 3."""

from tfhub_ft.backbone import HubBackbone, HubModuleError, resolve_handle
from tfhub_ft.blocks import Block, group_into_blocks, top_blocks
from tfhub_ft.config import DEFAULT_HUB_URL, FineTuneConfig
from tfhub_ft.data import ImageSet, load_images, stratified_split
from tfhub_ft.export import export_saved_model, read_labels
from tfhub_ft.model import ImageClassifier, build_classifier
from tfhub_ft.tuner import FineTuner

__version__ = "0.1.0"

__all__ = [
    "Block",
    "DEFAULT_HUB_URL",
    "FineTuneConfig",
    "FineTuner",
    "HubBackbone",
    "HubModuleError",
    "ImageClassifier",
    "ImageSet",
    "build_classifier",
    "export_saved_model",
    "group_into_blocks",
    "load_images",
    "read_labels",
    "resolve_handle",
    "stratified_split",
    "top_blocks",
]
