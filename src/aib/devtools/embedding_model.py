"""A real embedding model for tests: SmolLM2 (:mod:`aib.devtools.models`) with mean pooling.

SmolLM2's GGUF names no pooling, so llama-cpp-python's server (``--embedding true``) answers one vector
per *token* (a list of lists: not OpenAI's embeddings shape). :func:`ensure_embedding_model` writes a
copy of the file whose metadata says ``llama.pooling_type = 1`` (mean), with the ``gguf`` package
(the test extra), once, next to the model in the cache; served from it, ``/v1/embeddings`` answers
one 576-float vector per input, as a sentence-embedding server does.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from aib.devtools.models import _cache_lock, _is_gguf, ensure_model

POOLED_FILENAME = "SmolLM2-135M-Instruct.Q4_1.mean-pooled.gguf"
MEAN = 1  # llama.cpp's LLAMA_POOLING_TYPE_MEAN


def ensure_embedding_model(cache_dir: Path | None = None) -> Path:
    """Path of the mean-pooled copy of the SmolLM2 model (written on first use, ~100 MB, a few s)."""
    source = ensure_model(cache_dir, progress=False)
    target = source.with_name(POOLED_FILENAME)
    if _is_gguf(target):
        return target
    with _cache_lock(source.parent):
        if _is_gguf(target):
            return target
        import gguf  # the test extra; imported only when the copy is made
        from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

        fd, tmp_name = tempfile.mkstemp(prefix=f".{POOLED_FILENAME}.", suffix=".part", dir=source.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            reader = gguf.GGUFReader(source, "r")
            arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
            writer = gguf.GGUFWriter(tmp, arch=arch, endianess=reader.endianess)
            pooling = {f"{arch}.pooling_type": MetadataDetails(gguf.GGUFValueType.UINT32, MEAN)}
            copy_with_new_metadata(reader, writer, pooling, [])
            tmp.chmod(0o644)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target
