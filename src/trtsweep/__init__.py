"""trtsweep: find the fastest way to deploy a TensorFlow SavedModel."""

__version__ = "0.1.0"
