#!/usr/bin/env python3
"""Turn a GGUF model (SmolLM2, the test model) into a Hugging Face folder vLLM can load.

Runs with the vLLM venv's Python (scripts/vllm-setup.sh): transformers reads the GGUF (dequantizing it,
which needs the `gguf` package), and a plain model is rebuilt from the loaded config before
`save_pretrained`: transformers 5 marks a GGUF-loaded model as quantized, and vLLM would then look for a
quantization method that does not exist. Writes float32 weights, the tokenizer and its chat template.

    python scripts/gguf_to_hf.py MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.for_model(
        **{k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"}
    )
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:  # tied embeddings have no lm_head weight
        raise SystemExit(f"weights do not match: missing {missing}, unexpected {unexpected}")
    if missing:
        plain.tie_weights()
    tmp = out.with_name(out.name + ".part")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    gguf, out = Path(argv[0]), Path(argv[1])
    if out.exists():
        print(f"{out} exists; remove it to convert again", file=sys.stderr)
        return 1
    convert(gguf, out)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
