"""The classifier: preprocessing -> augmentation -> backbone -> dropout -> head."""

import keras
import tensorflow as tf

from tfhub_ft import augmentation as augmentation_lib
from tfhub_ft import preprocessing
from tfhub_ft.checks import check_integer


class ImageClassifier(keras.Model):
    """Images of any size in, class logits out.

    Call arguments:
        images: uint8 [N, H, W, 3] in [0, 255], or float [N, H, W, 3] RGB in
            [0, 1]; any H and W (resized to `image_size` inside).
        training: Python bool; augmentation and dropout act only when True.

    Returns:
        float32 logits [N, num_classes].

    Args:
        backbone: A `HubBackbone` (or any layer mapping float32 images in
            [0, 1] to [N, D] features).
        num_classes: Number of classes, >= 2.
        image_size: Side of the square images the backbone sees.
        dropout_rate: Dropout before the head, in [0, 1).
        augmentation: Names of training-only augmentations ("flip").
        seed: Seed of the head initialiser and the augmentation.
    """

    def __init__(self, backbone, num_classes, image_size, dropout_rate=0.2,
                 augmentation=(), seed=0, **kwargs):
        kwargs.setdefault("name", "image_classifier")
        # float32 whatever Keras's global dtype policy (`HubBackbone` says
        # why): under a mixed one, float inputs would be cast to float16 on
        # the way in.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.backbone = backbone
        self.num_classes = num_classes
        self.image_size = image_size
        self.augmentation = tuple(augmentation)
        self.flip = augmentation_lib.online_layer(self.augmentation, seed)
        # float32 like the backbone and the head, whatever Keras's global
        # dtype policy: a float16 step between them only loses precision.
        self.dropout = keras.layers.Dropout(dropout_rate, seed=seed, dtype="float32")
        self.head = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
            dtype="float32", name="head")

    def preprocess(self, images):
        """uint8 or float images of any size -> float32 [N, S, S, 3] in [0, 1]."""
        return preprocessing.to_unit_range(
            preprocessing.resize_images(images, self.image_size))

    def classify_features(self, features, training=False):
        """Backbone features [N, D] -> logits [N, num_classes] (the head)."""
        return self.head(self.dropout(features, training=training))

    def call(self, images, training=False):
        images = self.preprocess(images)
        if training and self.flip is not None:
            images = self.flip(images, training=True)
        return self.classify_features(self.backbone(images, training=training),
                                      training=training)

    def build_head(self, feature_dim):
        """Creates the head's weights without running the backbone."""
        self.head.build((None, feature_dim))
        self.built = True


class CachedInputClassifier(keras.Model):
    """The last layers of an `ImageClassifier`, fed from cached activations.

    Shares the classifier's weights, so training it trains the classifier.

    Call arguments:
        inputs: float32 backbone features [N, D] when `top` is None, else
            the tuple of boundary tensors that `top` takes.

    Returns:
        float32 logits [N, num_classes].

    Args:
        classifier: The `ImageClassifier` whose dropout and head are used.
        top: Optional `BackboneTop`, the trainable top blocks of the backbone.
    """

    def __init__(self, classifier, top=None, **kwargs):
        kwargs.setdefault("name", "cached_input_classifier")
        kwargs.setdefault("dtype", "float32")  # as ImageClassifier's
        super().__init__(**kwargs)
        self.classifier = classifier
        self.top = top

    def call(self, inputs, training=False):
        features = self.top(inputs) if self.top is not None else inputs
        return self.classifier.classify_features(features, training=training)


def build_classifier(backbone, num_classes, image_size, dropout_rate=0.2,
                     augmentation=(), seed=0):
    """Builds an `ImageClassifier` whose only random layer is the head.

    Raises:
        ValueError: if `num_classes` < 2.
    """
    check_integer("num_classes", num_classes, 2, context=" (a classifier needs two classes)")
    model = ImageClassifier(backbone, num_classes, image_size, dropout_rate,
                            augmentation, seed)
    model.build_head(backbone.feature_dim)
    return model
