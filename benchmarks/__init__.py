"""Load benchmark for this runtime and plain vLLM: ``python -m benchmarks``.

Why a package of its own: users size deployments with load tests, and the runtime's promise
(KServe's operations at plain vLLM's speed) is only credible with numbers measured side by
side, with the same prompts, the same engine settings and vLLM's own metric definitions.
"""
