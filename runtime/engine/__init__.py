"""The engine boundary: an interface (``base``), with the vLLM implementation behind it.

Only the ``runtime/engine/vllm_*.py`` modules import vLLM (ruff TID251 enforces it), so a vLLM
upgrade touches them alone:

- ``vllm_args``: engine arguments (vLLM's own serve parser, the runtime's CPU defaults);
- ``vllm_engine``: the engine (``VLLMEngine``): start, stop, health, adapters, and the v2 /
  generate translation onto vLLM's OpenAI serving code;
- ``vllm_client``: vLLM's engine client, built and measured;
- ``vllm_openai``: OpenAI request objects and serving handlers, called directly;
- ``vllm_stream``: streamed completions read as objects;
- ``vllm_tools``: tool calls that fit their schemas;
- ``vllm_tls``: certificate reload for the HTTPS listener;
- ``vllm_fixes``, ``vllm_ledger``: vLLM plugins (a fix for CPU LoRA batches; a ledger line per
  engine start).

``base`` (the interface and its typed request) and ``structured`` (decoding constraints as each
protocol sends them) import no vLLM.
"""
