"""dpcore: the pure logic of dpbeam.

Config, project layout, metadata, image math, crops, record schemas and model
building. Nothing here imports Apache Beam, and TensorFlow is imported only by
the modules that need it, never by ``import dpcore`` itself.
"""

__version__ = "0.1.0"
