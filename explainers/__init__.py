"""The LLM explainer: a KServe explainer process that attributes an LLM's answer to its prompt.

Why a separate package: KServe routes ``POST /v1/models/{name}:explain`` to an
InferenceService's explainer component. This package is that component for language models.
It scores perturbed prompts through the predictor's OpenAI ``/v1/completions`` route (prompt
log-probabilities, all perturbations in one batch so vLLM batches them) and runs pluggable
attribution methods registered under the entry-point group ``kserve_llm.explainer_methods``.

Only ``explainers.server`` imports ``kserve``; everything else is importable in tests without
it (``import kserve`` parses ``sys.argv`` at import time).
"""

METHOD_ENTRY_POINT_GROUP = "kserve_llm.explainer_methods"
