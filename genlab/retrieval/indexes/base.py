"""The interface every vector index shares: add, search (top-k with a metadata filter), remove, save/load.

Handbook V (vector databases). Scores are always "higher is better": the inner product for metric
"ip" and "cosine" (cosine normalises vectors on the way in), and the negative squared Euclidean
distance for "l2". Each row carries an external int64 id and an optional JSON-able metadata dict;
`remove` leaves a tombstone (the row stays, searches skip it), which is how HNSW must delete.

Persistence is one `.npz` file written to a temporary name, fsynced and `os.replace`d into place, so
a crash leaves either the old file or the new one. No pickles: arrays plus a JSON header.

    python -m pytest -q tests/retrieval/test_indexes.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Mapping, Sequence, Union

import numpy as np

from genlab.atomic import atomic_open
from genlab.errors import ConfigError, GenlabError

METRICS = ("cosine", "ip", "l2")
Filter = Union[Mapping[str, Any], Callable[[dict], bool], None]


@dataclass
class SearchResult:
    """scores (nq, k) float32 and ids (nq, k) int64; missing slots hold -inf and -1."""

    scores: np.ndarray
    ids: np.ndarray

    def __iter__(self) -> Iterator[np.ndarray]:  # allows `scores, ids = index.search(...)`
        yield self.scores
        yield self.ids


def matches(meta: dict, flt: Filter) -> bool:
    """A dict filter matches when every key equals the value (or is in it, for list/tuple/set values)."""
    if flt is None:
        return True
    if callable(flt):
        return bool(flt(meta))
    for key, want in flt.items():
        have = meta.get(key)
        if isinstance(want, (list, tuple, set, frozenset)):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k columns per row of a (nq, n) score matrix, sorted descending; pads with -inf / -1."""
    nq, n = scores.shape
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    take = min(k, n)
    if take == 0:
        return out_scores, out_rows
    part = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < n else np.tile(np.arange(n), (nq, 1))
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    vals = np.take_along_axis(part_scores, order, axis=1)
    finite = np.isfinite(vals)
    out_scores[:, :take] = np.where(finite, vals, -np.inf)
    out_rows[:, :take] = np.where(finite, rows, -1)
    return out_scores, out_rows


class VectorIndex:
    """Bookkeeping shared by all indexes; subclasses implement _add_rows, _search_rows, _state, _restore."""

    kind: ClassVar[str] = "base"
    registry: ClassVar[dict[str, type["VectorIndex"]]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        VectorIndex.registry[cls.kind] = cls

    def __init__(self, dim: int, metric: str = "cosine"):
        if dim < 1:
            raise ConfigError(f"index dimension must be >= 1, got {dim}")
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; choose one of {METRICS}")
        self.dim = int(dim)
        self.metric = metric
        self._ids = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._meta: list[dict] = []
        self._row_of: dict[int, int] = {}
        self._next_id = 0

    # -- helpers ---------------------------------------------------------------------------
    def _prepare(self, vectors: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise GenlabError(f"{what} have dimension {x.shape[-1] if x.ndim else 0}, but this {self.kind} index holds dimension {self.dim}")
        if not np.isfinite(x).all():
            raise GenlabError(f"{what} contain NaN or infinity")
        if self.metric == "cosine":
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(x, dtype=np.float32)

    def __len__(self) -> int:
        return int(self._alive.sum())

    @property
    def ntotal(self) -> int:
        """Rows stored, tombstones included."""
        return len(self._ids)

    def metadata(self, id: int) -> dict:
        return self._meta[self._row_of[int(id)]]

    def __contains__(self, id: int) -> bool:
        return int(id) in self._row_of

    # -- public API ------------------------------------------------------------------------
    def add(self, vectors: np.ndarray, ids: Sequence[int] | np.ndarray | None = None,
            metadata: Sequence[dict | None] | None = None) -> np.ndarray:
        """Add vectors; returns their ids (fresh consecutive ids when none are given)."""
        x = self._prepare(vectors, "added vectors")
        n = len(x)
        if ids is None:
            new_ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        else:
            new_ids = np.asarray(ids, dtype=np.int64).reshape(-1)
            if len(new_ids) != n:
                raise GenlabError(f"got {n} vectors but {len(new_ids)} ids")
            if len(np.unique(new_ids)) != n:
                raise GenlabError("ids passed to add() repeat")
            clash = [int(i) for i in new_ids if int(i) in self._row_of]
            if clash:
                raise GenlabError(f"ids already in the index: {clash[:5]} (remove them first)")
        if metadata is not None and len(metadata) != n:
            raise GenlabError(f"got {n} vectors but {len(metadata)} metadata entries")
        if n == 0:
            return new_ids
        first_row = len(self._ids)
        self._add_rows(x)
        self._ids = np.concatenate([self._ids, new_ids])
        self._alive = np.concatenate([self._alive, np.ones(n, dtype=bool)])
        self._meta.extend(dict(m) if m else {} for m in (metadata or [None] * n))
        for offset, i in enumerate(new_ids):
            self._row_of[int(i)] = first_row + offset
        self._next_id = max(self._next_id, int(new_ids.max()) + 1)
        return new_ids

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Tombstone the given ids; unknown ids are ignored. Returns how many were removed."""
        removed = 0
        for i in np.asarray(ids, dtype=np.int64).reshape(-1):
            row = self._row_of.pop(int(i), None)
            if row is not None:
                self._alive[row] = False
                removed += 1
        return removed

    def allowed_rows(self, flt: Filter) -> np.ndarray | None:
        """Boolean mask of rows a search may return, or None when every row may."""
        if flt is None:
            return None if self._alive.all() else self._alive.copy()
        mask = self._alive.copy()
        for row in np.flatnonzero(mask):
            mask[row] = matches(self._meta[row], flt)
        return mask

    def search(self, queries: np.ndarray, k: int = 10, filter: Filter = None) -> SearchResult:
        """Top-k ids and scores (higher is better) for each query row."""
        if k < 1:
            raise GenlabError(f"k must be >= 1, got {k}")
        q = self._prepare(queries, "queries")
        allowed = self.allowed_rows(filter)
        if len(self._ids) == 0 or (allowed is not None and not allowed.any()):
            return SearchResult(np.full((len(q), k), -np.inf, np.float32), np.full((len(q), k), -1, np.int64))
        scores, rows = self._search_rows(q, k, allowed)
        ids = np.where(rows >= 0, self._ids[np.maximum(rows, 0)], -1)
        return SearchResult(scores.astype(np.float32), ids.astype(np.int64))

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index to one .npz file atomically (temp file + fsync + os.replace)."""
        path = Path(path)
        try:
            header = json.dumps({"kind": self.kind, "dim": self.dim, "metric": self.metric,
                                 "next_id": self._next_id, "config": self._config(), "meta": self._meta})
        except TypeError as e:
            raise GenlabError(f"index metadata must be JSON-serialisable: {e}") from e
        arrays = {f"s_{k}": v for k, v in self._state().items()}
        arrays.update(header=np.array(header), ids=self._ids, alive=self._alive)
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "VectorIndex":
        """Read a file written by save(); called on VectorIndex it dispatches on the stored kind."""
        path = Path(path)
        if not path.is_file():
            raise GenlabError(f"no index file at {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(str(z["header"]))
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError) as e:
            raise GenlabError(f"{path} is not a genlab index file: {e}") from e
        target = VectorIndex.registry.get(header["kind"])
        if target is None or (cls is not VectorIndex and not issubclass(target, cls)):
            raise GenlabError(f"{path} holds a {header['kind']!r} index, not {cls.kind!r}")
        index = target(dim=header["dim"], metric=header["metric"], **header["config"])
        index._ids = arrays["ids"].astype(np.int64)
        index._alive = arrays["alive"].astype(bool)
        index._meta = header["meta"]
        index._next_id = header["next_id"]
        index._row_of = {int(i): r for r, i in enumerate(index._ids) if index._alive[r]}
        index._restore({k[2:]: v for k, v in arrays.items() if k.startswith("s_")})
        return index

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays (vectors, codes, graph), not counting metadata."""
        return int(sum(v.nbytes for v in self._state().values()) + self._ids.nbytes + self._alive.nbytes)

    # -- subclass hooks --------------------------------------------------------------------
    def _config(self) -> dict:
        return {}

    def _add_rows(self, x: np.ndarray) -> None:
        raise NotImplementedError

    def _search_rows(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, state: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


def exact_scores(q: np.ndarray, x: np.ndarray, metric: str, x_sqnorms: np.ndarray | None = None) -> np.ndarray:
    """Score matrix (nq, n): inner product, or negative squared L2 distance."""
    dots = q @ x.T
    if metric != "l2":
        return dots
    xn = x_sqnorms if x_sqnorms is not None else np.einsum("ij,ij->i", x, x)
    return 2.0 * dots - xn[None, :] - np.einsum("ij,ij->i", q, q)[:, None]


class GrowableRows:
    """A float32/int matrix with amortised O(1) appends (capacity doubling)."""

    def __init__(self, width: int, dtype=np.float32, fill=0):
        self.data = np.full((16, width), fill, dtype=dtype)
        self.n = 0
        self.fill = fill

    def reserve(self, total: int) -> None:
        if total > len(self.data):
            bigger = np.full((max(total, 2 * len(self.data)), self.data.shape[1]), self.fill, dtype=self.data.dtype)
            bigger[: self.n] = self.data[: self.n]
            self.data = bigger

    def append(self, rows: np.ndarray) -> None:
        self.reserve(self.n + len(rows))
        self.data[self.n:self.n + len(rows)] = rows
        self.n += len(rows)

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]
