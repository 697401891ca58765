"""tfhub_ft: fine-tune TF Hub image feature vectors with Keras 3."""

from tfhub_ft.arrays import ArrayBudget, FileArray
from tfhub_ft.backbone import BackboneSplit, HubBackbone, HubModuleError, resolve_handle
from tfhub_ft.blocks import Block, group_into_blocks, top_blocks
from tfhub_ft.config import DEFAULT_HUB_URL, FineTuneConfig
from tfhub_ft.data import ImageSet, load_images, stratified_split
from tfhub_ft.distribution import get_strategy
from tfhub_ft.export import export_saved_model, read_labels
from tfhub_ft.hub_export import export_backbone
from tfhub_ft.model import ImageClassifier, build_classifier
from tfhub_ft.tuner import FineTuner

__version__ = "0.1.0"

__all__ = [
    "ArrayBudget",
    "BackboneSplit",
    "Block",
    "DEFAULT_HUB_URL",
    "FineTuneConfig",
    "FileArray",
    "FineTuner",
    "HubBackbone",
    "HubModuleError",
    "ImageClassifier",
    "ImageSet",
    "build_classifier",
    "export_backbone",
    "export_saved_model",
    "get_strategy",
    "group_into_blocks",
    "load_images",
    "read_labels",
    "resolve_handle",
    "stratified_split",
    "top_blocks",
]
