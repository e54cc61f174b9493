"""The compression engine: a pure library (Keras 3, numpy, standard library; no web, queue or DB)."""
