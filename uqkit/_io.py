"""Safe, atomic tensor files: safetensors with a ``uqkit`` kind tag; nothing is ever unpickled."""

from __future__ import annotations

import os
import re
import tempfile
from glob import escape as glob_escape
from pathlib import Path

from torch import Tensor

#: Characters and length of the random part of `tempfile.mkstemp` names (``tempfile._RandomNameSequence``).
_TEMP_RANDOM = "[a-z0-9_]{8}"


def save_tensors(path: str | Path, tensors: dict[str, Tensor], *, kind: str, meta: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``path`` as safetensors, tagged with ``kind``; atomic (temp file, fsync, rename).

    The temporary file is ``.<name>.<8 random characters>.tmp`` beside ``path``. A process killed while
    writing leaves one behind; the next successful write of the same ``path`` deletes such leftovers
    (only names of exactly that pattern; two processes writing one path at once are not supported).
    The file gets the permissions of a plain ``open(path, "w")`` (0666 less the umask), not mkstemp's 0600.
    """
    from safetensors.torch import save

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"uqkit_kind": kind, **(meta or {})}
    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _remove_stale_temp_files(path)


def _umask() -> int:
    """The process umask (read by setting it and restoring it at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _remove_stale_temp_files(path: Path) -> None:
    """Delete ``.<name>.XXXXXXXX.tmp`` files that interrupted writes of ``path`` left beside it."""
    own = re.compile(rf"\.{re.escape(path.name)}\.{_TEMP_RANDOM}\.tmp")
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        if own.fullmatch(leftover.name) and leftover.is_file():
            leftover.unlink(missing_ok=True)


def load_tensors(path: str | Path, *, kind: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read a file written by `save_tensors` with the same ``kind``; a clear ``ValueError`` otherwise."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"path: no such file: {path}")
    try:
        # Copies in torch's own (64-byte aligned) memory: tensors viewing the file's bytes sit at
        # alignments that vary from load to load, and vectorised kernels round differently on them,
        # so a resumed run would drift from an uninterrupted one in the last bits.
        tensors = {k: v.clone() for k, v in load(path.read_bytes()).items()}
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, ValueError, OSError, RuntimeError) as err:
        raise ValueError(f"path: {path} is not a uqkit file (not a valid safetensors file: {err})") from None
    if meta.get("uqkit_kind") != kind:
        raise ValueError(f"path: {path} is not a {kind} file (found kind {meta.get('uqkit_kind')!r})")
    return tensors, meta

