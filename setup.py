"""tfhub_ft: fine-tune TF Hub image feature vectors with Keras 3."""

import setuptools

setuptools.setup(
    name="tfhub_ft",
    version="0.1.0",
    description=("Fine-tune TF Hub / Kaggle Models image feature vectors into "
                 "SavedModel image classifiers with Keras 3."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["tfhub_ft", "tfhub_ft.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.15,<3.16",  # the range tested (see _keras_fit_workaround)
        # tensorflow_hub resolves and caches handles; it imports tf_keras.
        "tensorflow-hub>=0.16,<0.17",
        "tf-keras>=2.16,<2.22",
        "tensorflow-datasets>=4.9",
        # tensorflow-datasets imports it to download and prepare a dataset
        # (tfds.load("tf_flowers") on a fresh install) but does not declare it.
        "importlib_resources>=5.0",
        "absl-py>=1.0",
        "numpy>=1.26",
        # LiteRT's interpreter runs the exported .tflite files (the parity
        # check, batch prediction); tf.lite.Interpreter is deprecated.
        "ai-edge-litert>=2.3",
        # The run report's plots and metrics, and TensorBoard logs.
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "tensorboard>=2.16,<2.22",
    ],
    # Pillow writes the test images (tests/fixtures.py, tests/photos.py).
    extras_require={"test": ["pytest>=7", "Pillow>=9.4"]},
    entry_points={"console_scripts": ["tfhub_ft=tfhub_ft.cli:run"]},
    license="Apache-2.0",
)
