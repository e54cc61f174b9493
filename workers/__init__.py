"""Secateurs workers: the job spec, the compression engine, the runner and its dispatchers."""
