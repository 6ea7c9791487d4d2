"""Installs the `mrcnn` package (Mask R-CNN on TensorFlow 2 / Keras 3)."""

from setuptools import find_packages, setup

setup(
    name="mrcnn",
    version="3.0.0.dev0",
    description="Mask R-CNN for object detection and instance segmentation on TensorFlow 2 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["mrcnn", "mrcnn.*"]),
    entry_points={"console_scripts": ["mrcnn = mrcnn.cli:main"]},
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.16",   # the first release whose tf.keras is Keras 3
        "numpy>=1.23",
        "scipy>=1.8",
        "scikit-image>=0.19",
        "h5py>=3.6",
        "pycocotools>=2.0.6",
        "matplotlib>=3.5",
        "tqdm>=4.60",
        "tensorboard>=2.16",  # TensorFlow no longer pulls it in; train() logs each loss to it
    ],
    extras_require={
        # imaug: the maintained fork of imgaug (same `imgaug` module; imgaug 0.4.0 does not
        # import on numpy 2). Its opencv<4.13 pin holds numpy below 2.3.
        "imgaug": ["imaug>=0.4.3"],
        # optional: convert an export_saved_model() folder to ONNX and run it (tests marked slow).
        "onnx": ["tf2onnx>=1.16", "onnxruntime>=1.17"],
        # imaug here so that CI exercises the imgaug path too (tests/test_migration.py).
        "test": ["pytest>=7", "hypothesis>=6", "nbclient>=0.7", "nbformat>=5", "ipykernel>=6",
                 "imaug>=0.4.3"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
