"""File hashes for provenance: checkpoints record which data they were trained on."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from prefloop.errors import DataError


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (constant memory for any file size)."""
    h = hashlib.sha256()
    try:
        with Path(path).open("rb") as f:
            while chunk := f.read(chunk_size):
                h.update(chunk)
    except FileNotFoundError:
        raise DataError.whole(path, "file not found") from None
    except OSError as e:
        raise DataError.whole(path, f"cannot read the file ({e.strerror or e})") from None
    return h.hexdigest()
