"""The engine boundary: an interface, with the vLLM implementation behind it.

Only ``runtime/engine/vllm_engine.py`` imports vLLM (ruff TID251 enforces it), so a vLLM
upgrade touches that module alone.
"""
