"""Build llama.cpp's own ``llama-server`` for tests and benchmarks, once per machine, outside the repo.

PyPI ships no ``llama-server`` binary for this platform, but the sdist of llama-cpp-python (already a
test dependency, MIT) vendors llama.cpp's whole source. This builds only the ``llama-server`` target
from it, statically linked (one file: no ``.so.0`` links to set up, no ``LD_LIBRARY_PATH``), without
tests, examples, other tools, the web UI or OpenSSL, for this machine's CPU (``GGML_NATIVE``), and keeps
the binary in ``~/.cache/aib/llama-server/<llama-cpp-python version>-<machine>/llama-server``
(``$AIB_LLAMA_SERVER_CACHE`` moves it). Later calls return the cached binary at once.

    python -m aib.devtools.llama_server_build          # build if needed, print the path
    python -m aib.devtools.llama_server_build --check  # exit 1 when it is not built

Needs a C/C++ compiler and CMake (Debian ``build-essential cmake``; ``make sysdeps`` installs them);
uses Ninja when it is on the PATH. llama.cpp's server is a test part here: never shipped or imported.
"""

from __future__ import annotations

import fcntl
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

CACHE_ENV = "AIB_LLAMA_SERVER_CACHE"
PACKAGE = "llama-cpp-python"
BINARY = "llama-server"
CMAKE_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one static binary
    "-DGGML_NATIVE=ON",  # for this CPU only: the cache is per machine
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # it would download the web UI at build time
    "-DLLAMA_OPENSSL=OFF",
)


class BuildError(RuntimeError):
    """llama-server could not be built."""


def version() -> str:
    """The llama-cpp-python version whose vendored llama.cpp is built (the one installed here)."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        raise BuildError(f"{PACKAGE} is not installed: run `make install` first") from None


def cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "aib" / "llama-server"
    return root / f"{version()}-{platform.machine()}"


def binary_path() -> Path:
    return cache_dir() / BINARY


def find_binary() -> Path | None:
    """The built binary, or None when it has not been built on this machine."""
    path = binary_path()
    return path if path.is_file() and os.access(path, os.X_OK) else None


@contextmanager
def _lock(folder: Path) -> Iterator[None]:
    with (folder / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(cmd: list[str], log: Path, cwd: Path | None = None) -> None:
    with log.open("ab") as out:
        out.write(f"\n$ {' '.join(cmd)}\n".encode())
        out.flush()
        rc = subprocess.run(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, check=False
        ).returncode
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise BuildError(f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''} failed (exit {rc}); log {log}:\n{tail}")


def _source(tmp: Path, log: Path) -> Path:
    """Download llama-cpp-python's sdist and unpack only its vendored llama.cpp."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise BuildError(f"{tool} is not installed: run `make sysdeps` (Debian build-essential cmake)")
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", PACKAGE,
         "--disable-pip-version-check", f"{PACKAGE}=={version()}", "-d", str(tmp)],
        log,
    )  # fmt: skip
    sdists = sorted(tmp.glob("*.tar.gz"))
    if not sdists:
        raise BuildError(f"pip download {PACKAGE}=={version()} gave no sdist")
    with tarfile.open(sdists[0]) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name]
        tar.extractall(tmp / "src", members=members, filter="data")
    roots = list((tmp / "src").glob("*/vendor/llama.cpp"))
    if not roots:
        raise BuildError(f"{sdists[0].name} has no vendor/llama.cpp")
    return roots[0]


def build(jobs: int | None = None, progress: bool = True) -> Path:
    """Build ``llama-server`` unless it is cached; return its path."""
    found = find_binary()
    if found is not None:
        return found
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with _lock(folder):
        found = find_binary()
        if found is not None:  # another process built it while we waited
            return found
        log = folder / "build.log"
        log.write_text("")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="aib-llama-server-") as tmp_name:
            tmp = Path(tmp_name)
            if progress:
                print(
                    f"aib: building {BINARY} from {PACKAGE} {version()}'s llama.cpp (log {log})",
                    file=sys.stderr,
                )
            src = _source(tmp, log)
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            build_dir = tmp / "build"
            _run(["cmake", "-S", str(src), "-B", str(build_dir), *gen, *CMAKE_OPTIONS], log)
            n = jobs or os.cpu_count() or 2
            _run(["cmake", "--build", str(build_dir), "--target", BINARY, "-j", str(n)], log)
            built = build_dir / "bin" / BINARY
            if not built.is_file():
                raise BuildError(f"the build finished without {built}; log {log}")
            part = folder / f".{BINARY}.part"
            shutil.copy2(built, part)
            part.chmod(0o755)
            os.replace(part, folder / BINARY)
        if progress:
            print(f"aib: {BINARY} built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return folder / BINARY


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--check" in args:
        found = find_binary()
        print(found if found is not None else f"{BINARY} not built (expected {binary_path()})")
        return 0 if found is not None else 1
    try:
        print(build())
    except BuildError as exc:
        print(f"aib: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
