"""The Secateurs HTTP service: a FastAPI app over the job store, artifact store and dispatcher (see main.py)."""
