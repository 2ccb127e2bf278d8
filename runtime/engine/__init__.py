"""The engine boundary: an interface, with the vLLM implementation behind it.

Only the ``runtime/engine/vllm_*.py`` modules import vLLM (ruff TID251 enforces it):
``vllm_args`` (engine arguments), ``vllm_engine`` (the engine and the v2 translation) and
``vllm_openai`` (OpenAI request objects and handlers), so a vLLM upgrade touches them alone.
"""
