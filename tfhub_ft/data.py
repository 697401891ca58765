"""Training data: image folders, TFDS datasets and tf.data datasets.

Every source becomes an `ImageSet`: images decoded and resized once to the
backbone's size and kept as uint8, so epochs never decode a JPEG again.
"""

import dataclasses
import logging
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tfhub_ft import arrays, preprocessing

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ImageSet:
    """Decoded images with integer labels.

    Attributes:
        images: uint8 [N, S, S, 3] in [0, 255], a numpy array or (past the
            memory budget) an `arrays.FileArray`.
        labels: int32 [N] in [0, len(class_names)).
        class_names: One name per class, in label order.
        skipped: Paths of files that could not be decoded.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    skipped: List[str] = dataclasses.field(default_factory=list)

    def __len__(self):
        return len(self.labels)

    def subset(self, indices) -> "ImageSet":
        return ImageSet(arrays.subset(self.images, indices), self.labels[indices],
                        self.class_names)

    def to_dataset(self, batch_size, shuffle=False, seed=0, one_hot=True):
        """A batched tf.data pipeline of (uint8 images, labels).

        Labels are one-hot float32 [B, C] when `one_hot` (label smoothing
        needs them), else int32 [B].
        """
        return arrays.BatchSource(
            self.images, self.labels, batch_size,
            len(self.class_names) if one_hot else None, shuffle=shuffle, seed=seed).dataset()


def list_image_folder(directory) -> Tuple[List[str], np.ndarray, List[str]]:
    """Lists an image folder with one subfolder per class.

    Files whose extension is not in `preprocessing.IMAGE_EXTENSIONS` are
    ignored, and so are hidden files and folders.

    Returns:
        (paths, labels int32 [N], class names sorted alphabetically).

    Raises:
        ValueError: if the folder is missing, has fewer than two class
            folders, or a class folder holds no image.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(
            "Invalid value for `image_dir`. Expected a folder with one "
            f"subfolder of images per class. Received: {directory!r}, which "
            "is not a folder."
        )
    class_names = sorted(
        name for name in os.listdir(directory)
        if not name.startswith(".") and os.path.isdir(os.path.join(directory, name)))
    if len(class_names) < 2:
        raise ValueError(
            f"The image folder {directory!r} has {len(class_names)} class "
            f"subfolder(s) {class_names}; a classifier needs at least two. Put "
            "each class's images in a subfolder named after the class."
        )
    paths, labels, empty = [], [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(directory, name)
        files = []
        for root, dirs, filenames in os.walk(class_dir):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            files.extend(
                os.path.join(root, f) for f in sorted(filenames)
                if not f.startswith(".")
                and f.lower().endswith(preprocessing.IMAGE_EXTENSIONS))
        if not files:
            empty.append(name)
        paths.extend(files)
        labels.extend([label] * len(files))
    if empty:
        raise ValueError(
            f"The class folder(s) {empty} in {directory!r} hold no image "
            f"({', '.join(preprocessing.IMAGE_EXTENSIONS)}). Add images or "
            "remove the folder."
        )
    return paths, np.asarray(labels, np.int32), class_names


def decode_files(paths: Sequence[str], image_size: int, budget=None):
    """Decodes and resizes image files in parallel, skipping broken ones.

    Args:
        budget: `arrays.ArrayBudget` the images are stored in (memory, or
            files past the budget); all in memory when None.

    Returns:
        (images uint8 [M, S, S, 3], indices int [M] of the decoded paths,
        skipped paths). Order follows `paths`.
    """
    def load(index, path):
        return preprocessing.decode_and_resize(tf.io.read_file(path), image_size), index

    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(len(paths)), list(paths)))
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=True)
    # A corrupt file fails its own element only; its index is missing after.
    dataset = dataset.ignore_errors().batch(256).prefetch(2)
    budget = budget or arrays.ArrayBudget()
    images = budget.allocate((len(paths), image_size, image_size, 3), np.uint8, "images")
    kept = []
    for batch_images, batch_indices in _with_progress(dataset, len(paths)):
        indices = batch_indices.numpy()
        arrays.write_rows(images, indices, batch_images.numpy())
        kept.append(indices)
    kept = np.concatenate(kept) if kept else np.zeros([0], np.int64)
    skipped = sorted(set(range(len(paths))) - set(kept.tolist()))
    kept = np.sort(kept)
    if len(kept) < len(paths):
        images = arrays.subset(images, kept)
    return images, kept, [paths[i] for i in skipped]


def _with_progress(dataset, total):
    """Yields the batches, logging progress about every 10%."""
    done, step = 0, max(total // 10, 1)
    next_report = step
    for batch in dataset:
        done += int(batch[1].shape[0])
        if done >= next_report and total >= 1000:
            logger.info("Decoded %d/%d images", done, total)
            next_report += step
        yield batch


def load_image_folder(directory, image_size, budget=None) -> ImageSet:
    """Decodes an image folder into an `ImageSet`, warning about bad files."""
    paths, labels, class_names = list_image_folder(directory)
    images, kept, skipped = decode_files(paths, image_size, budget)
    if skipped:
        logger.warning(
            "Skipped %d file(s) in %s that could not be decoded as images: %s",
            len(skipped), directory, ", ".join(skipped))
    if len(kept) == 0:
        raise ValueError(f"No image in {directory!r} could be decoded.")
    result = ImageSet(images, labels[kept], class_names, skipped)
    missing = sorted(set(range(len(class_names))) - set(result.labels.tolist()))
    if missing:
        raise ValueError(
            f"Every image of class(es) {[class_names[i] for i in missing]} in "
            f"{directory!r} failed to decode; each class needs at least one "
            "readable image.")
    return result


def stratified_split(labels, validation_fraction, seed=0):
    """Splits indices so each class keeps its share in both parts.

    Every class with two or more examples gets at least one validation and
    one training example.

    Args:
        labels: int [N] class labels.
        validation_fraction: float in (0, 1).
        seed: Seed of the shuffle within each class.

    Returns:
        (train indices, validation indices), each sorted int64.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = int(round(len(members) * validation_fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        validation.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(validation, np.int64))


def load_tfds(name, split, image_size, data_dir=None) -> ImageSet:
    """Loads a TFDS image classification dataset with its label names.

    Raises:
        ValueError: if the dataset cannot be loaded (offline: pass
            `data_dir` where it was prepared) or has no image/label features.
    """
    import tensorflow_datasets as tfds

    try:
        dataset, info = tfds.load(name, split=split, data_dir=data_dir,
                                  with_info=True, as_supervised=True)
    except Exception as error:
        raise ValueError(
            f"Could not load the TFDS dataset {name!r} (split {split!r}): "
            f"{error}. Offline, prepare it on a machine with network access "
            "and pass its folder as `data_dir`, or use an image folder."
        ) from error
    label_feature = info.features[info.supervised_keys[1]]
    class_names = list(getattr(label_feature, "names", None) or
                       [str(i) for i in range(label_feature.num_classes)])
    return dataset_to_image_set(dataset, image_size, class_names)


def dataset_to_image_set(dataset, image_size, class_names=None) -> ImageSet:
    """Materialises an unbatched tf.data.Dataset of (image, label).

    Images may be uint8 in [0, 255] or float in [0, 1], of any size.

    Raises:
        TypeError: if the elements are not (image, label) pairs.
        ValueError: if a label is outside `class_names`.
    """
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise TypeError(
            "Invalid value for `dataset`. Expected a tf.data.Dataset of "
            f"(image, label) pairs. Received elements of {spec}")
    if spec[0].shape.rank == 4:
        dataset = dataset.unbatch()

    def prepare(image, label):
        image = preprocessing.resize_images(image, image_size)
        if image.dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(tf.round(image * 255.0), 0, 255), tf.uint8)
        return image, tf.cast(label, tf.int32)

    images, labels = [], []
    for image_batch, label_batch in dataset.map(
            prepare, num_parallel_calls=tf.data.AUTOTUNE).batch(256):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    if not images:
        raise ValueError("Invalid value for `dataset`: it is empty.")
    labels = np.concatenate(labels)
    if class_names is None:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    if labels.min() < 0 or labels.max() >= len(class_names):
        raise ValueError(
            f"Labels must lie in [0, {len(class_names)}) for class names "
            f"{list(class_names)}; the dataset has labels in "
            f"[{labels.min()}, {labels.max()}].")
    return ImageSet(np.concatenate(images), labels, list(class_names))


def is_tfds_name(source) -> bool:
    """Whether a data source names a TFDS dataset rather than a folder."""
    return (isinstance(source, str) and not os.path.isdir(source)
            and os.sep not in source)


def load_images(source, image_size, class_names=None, split="train",
                data_dir=None, budget=None) -> ImageSet:
    """Loads any supported data source into an `ImageSet`.

    Args:
        source: A folder path (one subfolder per class), a TFDS name (with
            `split` and `data_dir`), a `tf.data.Dataset` of (image, label),
            or an `ImageSet`.
        image_size: Side of the square uint8 images to keep.
        class_names: Class names for a `tf.data.Dataset` source.
        budget: `arrays.ArrayBudget` for decoded folder images (in memory
            when None).

    Raises:
        TypeError: for an unsupported source.
    """
    if isinstance(source, ImageSet):
        return source
    if isinstance(source, tf.data.Dataset):
        return dataset_to_image_set(source, image_size, class_names)
    if is_tfds_name(source):
        return load_tfds(source, split, image_size, data_dir)
    if isinstance(source, (str, os.PathLike)):
        return load_image_folder(source, image_size, budget)
    raise TypeError(
        "Invalid value for the data. Expected an image folder path, a TFDS "
        "dataset name, or a tf.data.Dataset of (image, label). Received: "
        f"{type(source).__name__}")


def match_classes(image_set: ImageSet, class_names, name) -> ImageSet:
    """Relabels `image_set` to the training classes, which must agree."""
    if list(image_set.class_names) == list(class_names):
        return image_set
    unknown = sorted(set(image_set.class_names) - set(class_names))
    if unknown:
        raise ValueError(
            f"The {name} data has class(es) {unknown} that the training data "
            f"does not have ({list(class_names)}). Use the same class "
            "folders in both.")
    mapping = np.asarray([list(class_names).index(c) for c in image_set.class_names],
                         np.int32)
    return ImageSet(image_set.images, mapping[image_set.labels], list(class_names),
                    image_set.skipped)
