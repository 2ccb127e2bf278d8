"""The predictor: a KServe ModelServer whose model wraps vLLM's async engine.

Run it with ``python -m runtime``. Importing this package imports neither kserve nor vLLM.
"""
