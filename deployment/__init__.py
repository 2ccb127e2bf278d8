"""Deployment tooling for the KServe vLLM runtime.

``python -m deployment run|plan|pods``: run an InferenceService's containers locally (the
closest thing to ``kubectl apply`` without a cluster), print what would run, or render the Pods
KServe would create (for policy scanners). ``python -m deployment.ray_bootstrap head|worker``:
the multi-node (Ray) entry point used inside the containers.
"""
