"""The backup repository format (FORMAT.md): content-defined chunks, deduplicated by a keyed
hash, compressed with zstd, sealed with ChaCha20-Poly1305 under per-session keys wrapped to age
X25519 recipients, gathered in packs on a Target."""

from services.backup.repo.chunker import ChunkParams
from services.backup.repo.crypto import new_identity
from services.backup.repo.errors import (
    BackupError,
    IntegrityError,
    KeyInvalid,
    RepositoryError,
    RestoreRefused,
    SnapshotNotFound,
    WrongIdentity,
)
from services.backup.repo.locks import LockLost, RepositoryLocked
from services.backup.repo.repository import (
    BackupStats,
    Progress,
    PruneStats,
    RepoParams,
    Repository,
    RestoreResult,
    SnapshotInfo,
    SnapshotWriter,
    VerifyReport,
)
from services.backup.repo.tree import Entry

__all__ = [
    "BackupError",
    "BackupStats",
    "ChunkParams",
    "Entry",
    "IntegrityError",
    "KeyInvalid",
    "LockLost",
    "Progress",
    "PruneStats",
    "RepoParams",
    "Repository",
    "RepositoryError",
    "RepositoryLocked",
    "RestoreRefused",
    "RestoreResult",
    "SnapshotInfo",
    "SnapshotNotFound",
    "SnapshotWriter",
    "VerifyReport",
    "WrongIdentity",
    "new_identity",
]
