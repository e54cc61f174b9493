"""Pieces of upload inspection (`workers.engine.archive`) that stand on their own.

* `jsontext`: JSON documents parsed under a size and nesting-depth limit, scanned in linear time.
* `hdf5`: HDF5 files walked from their metadata: every link examined without being followed, every dataset judged
  from its object header.
* `isolated`: an inspection run in a child process under a deadline, so that no upload can hold the caller's
  interpreter (its event loop, its GIL) for longer than the deadline.

Like the rest of the engine these import neither TensorFlow nor Keras.
"""
