"""Cleaning options, and the indexes that find exact and near duplicates in a stream of
examples without holding the stream in memory.

Both indexes live in a SQLite file in the dataset's working folder, so their memory stays
flat however many examples go through (SQLite keeps a bounded page cache and spills the rest
to disk):

- **Exact duplicates**: a 128-bit hash of the example's normalized text (Unicode NFKC, case
  folded, whitespace collapsed; roles included), a primary key.
- **Near duplicates**: MinHash signatures of the normalized text's 5-grams (of its UTF-8 bytes)
  (``datasketch``), banded for locality-sensitive hashing with the bands and rows
  ``datasketch.MinHashLSH`` chooses for the threshold (weighted towards recall). An example whose band collides with
  an earlier group's is checked against that group's first signature, and joins it only
  when the estimated Jaccard similarity reaches the threshold. datasketch's own LSH index
  keeps every key in memory (or in Redis or Cassandra), which a 1-million-example file
  cannot afford here; the bands themselves are its.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import unicodedata
import zlib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from tunewright.core.errors import FieldViolation, InvalidArgument
from tunewright.dataformats import Example

NUM_PERM = 128
LSH_WEIGHTS = (0.1, 0.9)
SHINGLE = 5
MAX_SEQ_LENGTH_LIMITS = (16, 131072)
_SPACES = re.compile(r"\s+")


class NearDuplicates(StrEnum):
    GROUP = "group"
    REMOVE = "remove"
    OFF = "off"


@dataclass(frozen=True)
class CleaningOptions:
    exact_dedupe: bool = True
    near_duplicates: NearDuplicates = NearDuplicates.GROUP
    near_duplicate_threshold: float = 0.8
    scrub_pii: bool = True
    # The trainer's default max_seq_length.
    max_seq_length: int = 512
    drop_overlength: bool = False

    def check(self) -> None:
        violations = []
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            violations.append(
                FieldViolation(
                    "cleaning.near_duplicate_threshold", f"must be in (0, 1], got {self.near_duplicate_threshold}"
                )
            )
        low, high = MAX_SEQ_LENGTH_LIMITS
        if not low <= self.max_seq_length <= high:
            violations.append(
                FieldViolation("cleaning.max_seq_length", f"must be in [{low}, {high}], got {self.max_seq_length}")
            )
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field} {v.description}" for v in violations),
                reason="INVALID_CLEANING_OPTIONS",
                violations=violations,
            )


# The page cache of each working database: memory is bounded by this, however large the
# file, and keys hashed at random need it larger than SQLite's default 2 MiB.
CACHE_KIB = 64 * 1024


def working_database(path: Path) -> sqlite3.Connection:
    """A scratch SQLite database: no journal, no syncing (it is thrown away after a crash),
    one transaction until closed."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = OFF")
    db.execute("PRAGMA synchronous = OFF")
    db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    db.execute("BEGIN")
    return db


def normalize(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def normalized_text(example: Example) -> str:
    """The example as one normalized string: a text's text, or each message's role and
    normalized content. Contents are normalized one by one: the separators are whitespace
    to the regular expression, and must not turn into spaces."""
    if "text" in example:
        return normalize(example["text"])
    return "\x1e".join(f"{m['role']}\x1f{normalize(m['content'])}" for m in example["messages"])


class DuplicateIndex:
    """Finds exact and near duplicates of earlier examples, by their position in the source."""

    def __init__(self, path: Path, options: CleaningOptions) -> None:
        self.options = options
        self.db = working_database(path)
        self.db.execute("CREATE TABLE exact (key BLOB PRIMARY KEY, position INTEGER) WITHOUT ROWID")
        # One row per band of every group's first signature: a hash of (band, its rows) -> group.
        self.db.execute("CREATE TABLE bands (key INTEGER PRIMARY KEY, grp INTEGER)")
        # The first signature of each group, which a candidate is checked against.
        self.db.execute("CREATE TABLE groups (grp INTEGER PRIMARY KEY, signature BLOB)")
        self.near = options.near_duplicates != NearDuplicates.OFF
        if self.near:
            from datasketch import MinHash, MinHashLSH

            # Candidates are checked against the threshold, so the bands are chosen to miss
            # few near duplicates (weights: false positives 0.1, false negatives 0.9): at the
            # threshold 0.8 that is 14 bands of 9 rows, finding 87% of pairs at similarity
            # 0.8 and 97.5% at 0.85, where the even weights' 9 bands of 13 find 40% and 69%.
            lsh = MinHashLSH(threshold=options.near_duplicate_threshold, num_perm=NUM_PERM, weights=LSH_WEIGHTS)
            self.bands, self.rows = lsh.b, lsh.r
            # One MinHash's permutations, reused for every example (building them is the slow part).
            # CRC-32 hashes the 5-grams: a C call, where datasketch's default SHA-1 in Python
            # took most of the time; MinHash's permutations do the mixing.
            self._minhash = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=zlib.crc32)
            self._empty = self._minhash.hashvalues.copy()
        # Groups that collided through more than one earlier group were merged: merged -> kept.
        self.merged: dict[int, int] = {}

    def close(self) -> None:
        self.db.execute("COMMIT")
        self.db.close()

    def exact_duplicate_of(self, normalized: str, position: int) -> int | None:
        """The position of an earlier example with the same normalized text, or None (and
        this one is remembered)."""
        key = hashlib.blake2b(normalized.encode(), digest_size=16).digest()
        found = self.db.execute("SELECT position FROM exact WHERE key = ?", (key,)).fetchone()
        if found:
            return found[0]
        self.db.execute("INSERT INTO exact VALUES (?, ?)", (key, position))
        return None

    def signature(self, normalized: str) -> np.ndarray:
        minhash = self._minhash
        minhash.hashvalues = self._empty.copy()
        # 5-grams of the UTF-8 bytes: the same as characters' for ASCII, and no encoding per gram.
        data = normalized.encode()
        minhash.update_batch({data[i : i + SHINGLE] for i in range(max(1, len(data) - SHINGLE + 1))})
        return minhash.hashvalues

    def near_group(self, signature: np.ndarray, position: int) -> tuple[int, bool]:
        """(the example's near-duplicate group, whether it joined an earlier group). A new
        group is named by the position of its first example."""
        keys = [
            int.from_bytes(
                hashlib.blake2b(
                    signature[band * self.rows : (band + 1) * self.rows].tobytes(), digest_size=8, salt=bytes([band])
                ).digest(),
                "big",
                signed=True,
            )
            for band in range(self.bands)
        ]
        found = self.db.execute(f"SELECT DISTINCT grp FROM bands WHERE key IN ({','.join('?' * len(keys))})", keys)
        candidates = {self.find(group) for (group,) in found}
        matches = sorted(
            group for group in candidates if self._similarity(signature, group) >= self.options.near_duplicate_threshold
        )
        if matches:
            group = matches[0]
            for other in matches[1:]:
                self.merged[other] = group
        else:
            group = position
            self.db.execute("INSERT INTO groups VALUES (?, ?)", (group, signature.tobytes()))
            self.db.executemany("INSERT OR IGNORE INTO bands VALUES (?, ?)", [(key, group) for key in keys])
        return group, bool(matches)

    def _similarity(self, signature: np.ndarray, group: int) -> float:
        stored = self.db.execute("SELECT signature FROM groups WHERE grp = ?", (group,)).fetchone()[0]
        return float(np.mean(np.frombuffer(stored, dtype=signature.dtype) == signature))

    def find(self, group: int) -> int:
        while group in self.merged:
            group = self.merged[group]
        return group
