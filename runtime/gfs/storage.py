"""The GFS storage interface: what the service needs from a database, nothing more.

The service (:mod:`runtime.gfs.service`) owns the protocol, access control and request
de-duplication; a :class:`Storage` owns durability and atomicity.  Everything here works
on *global* paths: absolute, normalised (``/a/b``, no ``.``/``..``/empty parts, no trailing
slash; the root is ``/``), already checked by the service.  Times are passed in (the
storage never reads a clock), so a simulated service gets deterministic ``mtime``\\ s.

Every method is atomic: it happens entirely or not at all, also when the process is
killed half way.  A reader never sees a half-written file: ``write`` and
``commit_upload`` replace or extend a file in one transaction.  Errors are Python's own
``OSError`` subclasses carrying the path (``FileNotFoundError(errno.ENOENT, "...",
path)``), so the service can send them as they are and the client raise them again.

Backends: :mod:`runtime.gfs.sqlite` (the default, an embedded file) and
:mod:`runtime.gfs.postgres` (a server, for deployments that outgrow one service).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

#: files are stored, read and uploaded in pieces of this size, so a 100 MB file never
#: sits in memory whole on the service
CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class Entry:
    """What ``stat`` tells about a path."""

    path: str
    kind: str  # "file" or "dir"
    size: int  # bytes (0 for a directory)
    mtime: float  # the service's clock at the last change
    version: int  # changes whenever the content changes (a file's writes, appends)

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size,
                "mtime": self.mtime, "version": self.version}


class Storage(ABC):
    """A file tree with atomic operations, plus the last reply per client."""

    chunk_size: int = CHUNK_SIZE

    # -------------------------------------------------------------- queries
    @abstractmethod
    def stat(self, path: str) -> Optional[Entry]:
        """The entry at ``path``, or None.  ``stat("/")`` is always a directory."""

    @abstractmethod
    def listdir(self, path: str) -> list[str]:
        """Names in a directory, sorted.  FileNotFoundError / NotADirectoryError."""

    @abstractmethod
    def read(self, path: str, offset: int = 0, size: int = -1,
             version: Optional[int] = None) -> tuple[bytes, Entry]:
        """Up to ``size`` bytes (all for -1) from ``offset``, and the entry they come from.

        With ``version``, fail with ``InterruptedError(errno.EINTR, "changed", path)`` if
        the file is no longer at that version, so a reader taking a large file in several
        calls never mixes two versions.  FileNotFoundError / IsADirectoryError.
        """

    # -------------------------------------------------------------- changes (each atomic)
    # ``request=(client, seq)``: in the same transaction, remember the change's result
    # (the returned entry's ``to_dict()`` as JSON, or ``null``) as that client's answer
    # to request ``seq`` (see ``recall``), so a retried request is answered, not redone.
    @abstractmethod
    def write(self, path: str, data: bytes, mode: str, now: float, *,
            request: Optional[tuple[str, int]] = None) -> Entry:
        """``mode`` "w": create or replace; "x": create, FileExistsError if it exists;
        "a": append (create if missing).  The parent must be a directory
        (FileNotFoundError / NotADirectoryError); a directory cannot be written
        (IsADirectoryError)."""

    @abstractmethod
    def mkdir(self, path: str, now: float, parents: bool = False,
              exist_ok: bool = False, *,
            request: Optional[tuple[str, int]] = None) -> Entry:
        """Like ``pathlib.Path.mkdir``: FileExistsError, FileNotFoundError (a missing
        parent without ``parents``), NotADirectoryError."""

    @abstractmethod
    def remove(self, path: str, *,
            request: Optional[tuple[str, int]] = None) -> None:
        """Remove a file (its content goes too).  FileNotFoundError, IsADirectoryError."""

    @abstractmethod
    def rmdir(self, path: str, *,
            request: Optional[tuple[str, int]] = None) -> None:
        """Remove an empty directory.  FileNotFoundError, NotADirectoryError,
        ``OSError(errno.ENOTEMPTY, ...)``; the root cannot be removed (PermissionError)."""

    @abstractmethod
    def rename(self, src: str, dst: str, now: float, *,
            request: Optional[tuple[str, int]] = None) -> Entry:
        """Move a file or directory (with everything under it), atomically, with
        ``os.rename``'s rules: a file replaces a file; a directory replaces only an empty
        directory (else ``OSError(errno.ENOTEMPTY)``); file onto directory is
        IsADirectoryError, directory onto file NotADirectoryError; a directory cannot move
        into itself (``OSError(errno.EINVAL)``); dst's parent must exist."""

    # -------------------------------------------------------------- uploads of large files
    @abstractmethod
    def stage(self, upload: str, offset: int, data: bytes, now: float) -> int:
        """Add ``data`` at ``offset`` of the staged upload ``upload`` (created on first
        use); a chunk already staged at that offset is replaced (a retry).  Returns the
        staged size.  Staged data is durable but invisible until committed.  ``now`` is
        kept as the upload's last-staged time (see ``discard_uploads_before``)."""

    @abstractmethod
    def commit_upload(self, upload: str, path: str, mode: str, now: float, *,
            request: Optional[tuple[str, int]] = None) -> Entry:
        """Publish a staged upload as ``write(path, staged bytes, mode)`` would, in one
        transaction, and forget the upload.  An upload never staged commits as empty."""

    @abstractmethod
    def discard_upload(self, upload: str) -> None:
        """Forget a staged upload (no error if unknown)."""

    @abstractmethod
    def discard_uploads_before(self, now: float) -> int:
        """Forget uploads last staged before ``now`` (abandoned); returns how many."""

    # -------------------------------------------------------------- de-duplication
    @abstractmethod
    def remember(self, client: str, seq: int, reply: str) -> None:
        """Keep ``reply`` (JSON text) as client ``client``'s answer to its request ``seq``
        (the service uses it for errors; changes remember their result themselves)."""

    @abstractmethod
    def recall(self, client: str) -> Optional[tuple[int, str]]:
        """The last ``(seq, reply)`` remembered for ``client``, or None (one per client:
        a client has one request in flight at a time)."""

    @abstractmethod
    def close(self) -> None:
        """Release the database (further calls fail)."""
