"""Side-by-side benchmarks of Secateurs against the TensorFlow Model Optimization Toolkit and plain training.

Not part of the test suite. Run `python -m bench --help`; results go to bench/results/*.json and the tables in
docs/BENCHMARKS.md are rendered from them (`python -m bench report`).
"""
