"""The fine-tuned backbone written back as a TF Hub image feature vector.

A backbone fine-tuned on one domain is a better start for the next task in
that domain. `HubBackbone` trains the loaded module's own variables, so the
loaded module object already holds the fine-tuned weights: saving it again
with `tf.saved_model.save` keeps its restored functions (`__call__` with
each traced `training` value), its variable names and its object graph.
The copy therefore has the same blocks, in the same order, and the same
graph split as the original, and any TF Hub consumer can load it.
"""

import logging
import os

import tensorflow as tf

from tfhub_ft import export as export_lib
from tfhub_ft import native_stderr

logger = logging.getLogger(__name__)


def export_backbone(backbone, export_dir):
    """Writes a `HubBackbone`'s module, with its current weights, as a hub module.

    The SavedModel follows the TF Hub reusable SavedModel convention for
    image feature vectors: `__call__(images, training=False)` maps float32
    [N, H, W, 3] RGB in [0, 1] to float32 [N, D] features, and it has
    `variables`, `trainable_variables` and `regularization_losses`, exactly
    as the module it was loaded from (with the original variable names).
    Load it with `FineTuner(export_dir)`, `HubBackbone(export_dir)` or
    `tensorflow_hub.KerasLayer(export_dir)` (tf_keras).

    It is written to a temporary folder beside `export_dir` and renamed into
    place, so a failed export leaves an earlier one intact.

    Args:
        backbone: A `HubBackbone` (fine-tuned or not).
        export_dir: The folder to write; an earlier export there is replaced.

    Returns:
        The export folder path.

    Raises:
        TypeError: if `backbone` is not a `HubBackbone`.
        ValueError: if `export_dir` is a file, a link, a folder that is
            neither empty nor an earlier backbone export
            (`export.check_replaceable`),
            or its parent cannot be written.
    """
    from tfhub_ft.backbone import HubBackbone
    if not isinstance(backbone, HubBackbone):
        raise TypeError(
            "Invalid value for `backbone`. Expected a HubBackbone (e.g. "
            f"`FineTuner.backbone`). Received: backbone of type {type(backbone).__name__}")
    with export_lib.atomic_folder(export_dir, "the backbone", kind="backbone") as staging:
        with native_stderr.quiet_saving_logs():
            tf.saved_model.save(backbone.module, staging)
    export_dir = os.path.abspath(os.fspath(export_dir))
    logger.info("Exported the backbone as a TF Hub module to %s", export_dir)
    return export_dir
