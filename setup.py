"""dpbeam: DeepProfiler's Cell Painting workflow as distributed dataflow."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# Floors, not pins: constraints.txt holds the exact versions CI and the demo use.
INSTALL_REQUIRES = [
    # [aws]: Beam's own S3 filesystem (boto3), for the few files Beam's sinks write (the dead letters).
    "apache-beam[aws]>=2.77",
    # Beam 2.77 needs protobuf >= 6.33.5, which only TensorFlow >= 2.20 accepts. Full "tensorflow",
    # not "tensorflow-cpu": Beam's TF model handler imports tensorflow_hub, which pulls it in anyway.
    "tensorflow>=2.20",
    "numpy>=1.26",
    "pandas>=2.1",
    "scipy>=1.11",
    "scikit-image>=0.22",
    "pyarrow>=15",
    "fsspec>=2024.2",
    "gcsfs>=2024.2",
    # s3:// through the same fsspec layer as gs:// (every dpbeam read and write goes through StoragePath);
    # chosen over Beam's S3 filesystem for that, and because it honours AWS_ENDPOINT_URL and anonymous access.
    "s3fs>=2024.2",
    "tifffile>=2024.1",  # TIFF decoding: tensorflow-io cannot load under TF >= 2.20 (see README)
    "pillow>=10.0",
    "h5py>=3.10",  # Keras-2 HDF5 checkpoints (DeepProfiler's format), read and written by layer name
    "tensorboard>=2.20",  # tf.summary needs it for train's summaries/; TF 2.21 no longer installs it
    "matplotlib>=3.8",  # training curves, illumination and montage pictures with real axes, ticks, colour bars
    "google-crc32c>=1.5",  # TFRecord framing in export-sc without importing TensorFlow (Google's C CRC-32C)
    # profile's network on CPUs: OpenVINO's CPU plugin runs the same frozen graph 1.4-1.8x faster than
    # TensorFlow with the same float32 features (dpcore/inference_engines.py; TensorFlow stays for GPUs).
    "openvino>=2025.0",
    "isal>=1.6",  # deflate for prepare's PNGs: Intel ISA-L, ~10x Pillow's PNG encoder at the same size
    # The crop kernel (dpcore/crop_kernel.py): cutting and normalising a site's cells in one compiled pass
    # in cache, ~2.8x TensorFlow's crop_and_resize + normalisation, and the reference's bits.
    "numba>=0.61",
    # The field's own libraries for the steps after profiling (aggregate, evaluate): pycytominer's
    # normalize / feature_select / consensus and copairs' mAP are what Cell Painting papers report, so
    # dpbeam calls them rather than re-deriving their definitions.
    "pycytominer>=1.7",
    "copairs>=0.5",
]

EXTRAS_REQUIRE = {
    "gcp": ["apache-beam[gcp]>=2.77"],
    "test": [
        "pytest>=8.0",
        "pytest-timeout>=2.3",
        "pytest-xdist>=3.5",  # scripts/test.sh runs the suite in three processes (see README, Tests)
        "hypothesis>=6.100",
        "gcp-storage-emulator>=2024.8",  # a local GCS server: tests run --root gs://... end to end
        "moto[server]>=5.0",  # a local S3 server: tests run --root s3://... and read a Gallery-shaped bucket
        "kubernetes-validate>=1.30",  # deploy/ manifests checked against Kubernetes' own JSON schema
        "jsonschema>=4.23",
    ],
}

setup(
    name="dpbeam",
    version="0.1.0",
    description="DeepProfiler's Cell Painting workflow (prepare, export-sc, train, profile) on Apache Beam",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="BSD-3-Clause",
    python_requires=">=3.11",
    packages=find_packages(include=["dpcore", "dpcore.*", "beam_pipelines", "beam_pipelines.*"]),
    package_data={"dpcore": ["example_data/README.md", "example_data/bbbc022/**/*"]},
    include_package_data=False,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["dpbeam = beam_pipelines.cli:entry_point"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Bio-Informatics",
        "Topic :: Scientific/Engineering :: Image Processing",
    ],
)
