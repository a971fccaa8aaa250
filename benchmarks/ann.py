"""ANN benchmark: genlab HNSW / IVF-PQ / LSH vs hnswlib and faiss on real MiniLM embeddings; encoder speed.

Handbook V (vector databases) and II (embeddings). Data: paragraphs of pydoc_data.topics and the
standard-library sources (present everywhere), embedded with genlab's MiniLM encoder (cached under
runs/cache/). The last 500 paragraphs (after a seeded shuffle) are held-out queries; ground truth is
exact inner-product search. Everything single-threaded: faiss.omp_set_num_threads(1), hnswlib
num_threads=1, genlab's numba kernels are sequential. QPS = queries / wall time of one batched call
(best of `repeats`). "At equal recall" interpolates log-QPS along each system's ef sweep at the recall
genlab's HNSW reaches with ef = 64. Memory: bytes of the index structures (genlab arrays, hnswlib
index_file_size, faiss serialised size) and the RSS growth while building.
Also: texts/s of genlab's encoder vs sentence-transformers on the same texts and batch size.

    python benchmarks/ann.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Python puts benchmarks/ first on sys.path; sibling benchmarks named like packages (peft.py ...) would
# shadow them, so drop it and import genlab from the repository root instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

from genlab.models.encoder import Encoder, default_model_dir  # noqa: E402
from genlab.retrieval.corpus import stdlib_paragraphs  # noqa: E402
from genlab.retrieval.indexes import ExactIndex, HNSWIndex, IVFPQIndex, LSHIndex  # noqa: E402
from genlab.retrieval.metrics import ann_recall as recall  # noqa: E402

K = 10


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def embed_cached(encoder: Encoder, texts: list[str], cache_dir: Path) -> np.ndarray:
    key = hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm_{len(texts)}_{key}.npy"
    if path.is_file():
        return np.load(path)
    log(f"embedding {len(texts)} paragraphs with genlab's encoder (cached at {path}) ...")
    done = [0]
    start = time.perf_counter()

    def progress(n: int) -> None:
        done[0] += n
        if done[0] % 2048 < n:
            log(f"  {done[0]}/{len(texts)}  {done[0] / (time.perf_counter() - start):.0f} texts/s")

    vectors = encoder.embed(texts, batch_size=64, progress=progress)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, path)
    return vectors


def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def qps_at_recall(points: list[tuple[float, float]], target: float) -> float:
    """log-QPS interpolated at `target` recall along a sweep of (recall, qps) points."""
    pts = sorted(points)
    if target <= pts[0][0]:
        return pts[0][1]
    for (r0, q0), (r1, q1) in zip(pts, pts[1:]):
        if r0 <= target <= r1:
            w = 0.0 if r1 == r0 else (target - r0) / (r1 - r0)
            return float(np.exp((1 - w) * np.log(q0) + w * np.log(q1)))
    return pts[-1][1] * (target <= pts[-1][0] + 1e-9)  # never reached: 0


def embed_speed(encoder: Encoder, texts: list[str], batch: int, repeats: int) -> dict:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(default_model_dir()), device="cpu")
    ours_t, theirs_t = float("inf"), float("inf")
    ours = theirs = None
    for _ in range(repeats):  # interleaved, best of each: the machine is shared
        t = time.perf_counter(); ours = encoder.embed(texts, batch_size=batch); ours_t = min(ours_t, time.perf_counter() - t)
        t = time.perf_counter(); theirs = st.encode(texts, batch_size=batch); theirs_t = min(theirs_t, time.perf_counter() - t)
    cos = np.sum(ours * theirs, axis=1) / np.linalg.norm(theirs, axis=1)
    return {"genlab_texts_per_s": len(texts) / ours_t, "st_texts_per_s": len(texts) / theirs_t,
            "ratio": theirs_t / ours_t, "min_cosine_vs_st": float(cos.min())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 vectors, 200 queries, short sweeps")
    ap.add_argument("--n", type=int, default=None, help="database vectors (default 20000; quick 5000)")
    ap.add_argument("--queries", type=int, default=None, help="held-out queries (default 500; quick 200)")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "cache")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (5000 if args.quick else 20000)
    nq = args.queries or (200 if args.quick else 500)
    repeats = args.repeats or (2 if args.quick else 3)
    ef_sweep = [16, 32, 64, 128] if args.quick else [16, 32, 48, 64, 96, 128, 256]

    import faiss
    import hnswlib

    faiss.omp_set_num_threads(1)
    texts = stdlib_paragraphs(n + nq)
    if len(texts) < n + nq:
        raise SystemExit(f"only {len(texts)} paragraphs available, need {n + nq}")
    order = np.random.default_rng(0).permutation(len(texts))
    texts = [texts[i] for i in order]
    encoder = Encoder.from_pretrained()
    vectors = embed_cached(encoder, texts, args.cache)
    base, queries = np.ascontiguousarray(vectors[:n]), np.ascontiguousarray(vectors[n:])
    dim = base.shape[1]
    truth = np.argsort(-(queries @ base.T), axis=1)[:, :K]

    rows: list[dict] = []
    sweeps: dict[str, list[tuple[float, float]]] = {}

    def run(name: str, build, search_at: dict, nbytes) -> None:
        before = rss_mb()
        t = time.perf_counter()
        index = build()
        build_s = time.perf_counter() - t
        rss = rss_mb() - before
        points = []
        for label, fn in search_at.items():
            ids, secs = timed(lambda: fn(index, label), repeats)
            r, q = recall(np.asarray(ids), truth), nq / secs
            points.append((r, q))
            rows.append({"system": name, "param": label, "recall@10": r, "qps": q, "build_s": build_s,
                         "mem_mb": nbytes(index) / 2**20, "rss_build_mb": rss})
            log(f"  {name:16s} {label:>12} recall {r:.4f}  {q:9.0f} qps")
        sweeps[name] = points

    log("building indexes ...")
    warm = HNSWIndex(dim, metric="ip", M=16, ef_construction=200)
    warm.add(base[:300])
    warm.search_ef(queries[:2], K, 16)  # numba compile / cache load happens here, not in the timings

    def build_hnsw():
        idx = HNSWIndex(dim, metric="ip", M=16, ef_construction=200)
        idx.add(base)
        return idx

    run("genlab-hnsw", build_hnsw, {f"ef={ef}": (lambda idx, label: idx.search_ef(queries, K, int(label[3:])).ids)
                                    for ef in ef_sweep}, lambda idx: idx.nbytes)

    def build_hnswlib():
        idx = hnswlib.Index(space="ip", dim=dim)
        idx.init_index(max_elements=n, M=16, ef_construction=200, random_seed=100)
        idx.set_num_threads(1)
        idx.add_items(base, np.arange(n), num_threads=1)
        return idx

    def hnswlib_search(idx, label):
        idx.set_ef(int(label[3:]))
        return idx.knn_query(queries, k=K, num_threads=1)[0]

    run("hnswlib", build_hnswlib, {f"ef={ef}": hnswlib_search for ef in ef_sweep}, lambda idx: idx.index_file_size())

    def build_faiss_hnsw():
        idx = faiss.IndexHNSWFlat(dim, 16, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = 200
        idx.add(base)
        return idx

    def faiss_hnsw_search(idx, label):
        idx.hnsw.efSearch = int(label[3:])
        return idx.search(queries, K)[1]

    faiss_bytes = lambda idx: faiss.serialize_index(idx).nbytes  # noqa: E731
    run("faiss-hnsw", build_faiss_hnsw, {f"ef={ef}": faiss_hnsw_search for ef in ef_sweep}, faiss_bytes)

    def build_flat():
        idx = faiss.IndexFlatIP(dim)
        idx.add(base)
        return idx

    run("faiss-flat", build_flat, {"exact": lambda idx, label: idx.search(queries, K)[1]}, faiss_bytes)

    def build_exact():
        idx = ExactIndex(dim, metric="ip")
        idx.add(base)
        return idx

    run("genlab-exact", build_exact, {"exact": lambda idx, label: idx.search(queries, K).ids}, lambda idx: idx.nbytes)

    nlist = 64 if args.quick else 256
    probes = [4, 8, 16] if args.quick else [4, 8, 16, 32]

    def build_ivfpq():
        idx = IVFPQIndex(dim, metric="ip", nlist=nlist, m=48, nbits=8, n_iter=15, max_train_points=n)
        idx.add(base)
        return idx

    run("genlab-ivfpq", build_ivfpq,
        {f"nprobe={p}": (lambda idx, label: idx.search_nprobe(queries, K, int(label[7:])).ids) for p in probes},
        lambda idx: idx.nbytes)

    def build_faiss_ivfpq():
        idx = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, 48, 8, faiss.METRIC_INNER_PRODUCT)
        idx.train(base)
        idx.add(base)
        return idx

    def faiss_ivfpq_search(idx, label):
        idx.nprobe = int(label[7:])
        return idx.search(queries, K)[1]

    run("faiss-ivfpq", build_faiss_ivfpq, {f"nprobe={p}": faiss_ivfpq_search for p in probes}, faiss_bytes)

    def build_lsh():
        idx = LSHIndex(dim, metric="ip", nbits=256, n_candidates=200)
        idx.add(base)
        return idx

    def lsh_search(idx, label):
        idx.n_candidates = int(label[5:])
        return idx.search(queries, K).ids

    run("genlab-lsh", build_lsh, {f"cand={c}": lsh_search for c in ([100, 400] if args.quick else [100, 200, 500, 1000])},
        lambda idx: idx.nbytes)

    speed_texts = texts[: 256 if args.quick else 1024]
    log(f"embedding speed on {len(speed_texts)} texts, batch 32 ...")
    speed = embed_speed(encoder, speed_texts, 32, repeats)

    at = {r["param"]: r for r in rows if r["system"] == "genlab-hnsw"}["ef=64"]
    target = at["recall@10"]
    hnswlib_at = qps_at_recall(sweeps["hnswlib"], target)
    faiss_at = qps_at_recall(sweeps["faiss-hnsw"], target)
    ours_at = qps_at_recall(sweeps["genlab-hnsw"], target)
    pick = lambda system, param: next(r for r in rows if r["system"] == system and r["param"] == param)  # noqa: E731
    ivf_mid = f"nprobe={probes[-2]}"

    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"ANN on {n} MiniLM embeddings of stdlib/pydoc paragraphs, {nq} queries, k={K}, 1 thread")
        for col in ("system", "param", "recall@10", "QPS", "build s", "index MB", "RSS+ MB"):
            table.add_column(col, justify="left" if col in ("system", "param") else "right")
        for r in rows:
            table.add_row(r["system"], r["param"], f"{r['recall@10']:.4f}", f"{r['qps']:.0f}", f"{r['build_s']:.2f}",
                          f"{r['mem_mb']:.1f}", f"{r['rss_build_mb']:.1f}")
        Console(width=120).print(table)
    except ImportError:  # pragma: no cover
        for r in rows:
            print(r)
    print(f"embedding: genlab {speed['genlab_texts_per_s']:.1f} texts/s, sentence-transformers "
          f"{speed['st_texts_per_s']:.1f} texts/s (ratio {speed['ratio']:.2f}); min cosine {speed['min_cosine_vs_st']:.7f}")
    print(f"HNSW at recall {target:.4f}: genlab {ours_at:.0f} qps, hnswlib {hnswlib_at:.0f} qps, faiss {faiss_at:.0f} qps")

    result = {
        "benchmark": "ann",
        "options": {"quick": args.quick, "n": n, "queries": nq, "dim": dim, "k": K, "threads": 1, "M": 16,
                    "ef_construction": 200, "ef_sweep": ef_sweep, "ivf_nlist": nlist, "pq_m": 48, "pq_nbits": 8,
                    "lsh_nbits": 256, "repeats": repeats, "hnsw_kernels": "numba"},
        "metrics": {
            "hnsw_recall_at_10": at["recall@10"], "hnsw_qps": at["qps"], "hnsw_build_s": at["build_s"],
            "hnsw_mem_mb": at["mem_mb"],
            "ivfpq_recall_at_10": pick("genlab-ivfpq", ivf_mid)["recall@10"], "ivfpq_qps": pick("genlab-ivfpq", ivf_mid)["qps"],
            "ivfpq_build_s": pick("genlab-ivfpq", ivf_mid)["build_s"], "ivfpq_mem_mb": pick("genlab-ivfpq", ivf_mid)["mem_mb"],
            "lsh_recall_at_10": rows[[i for i, r in enumerate(rows) if r["system"] == "genlab-lsh"][-1]]["recall@10"],
            "lsh_qps": rows[[i for i, r in enumerate(rows) if r["system"] == "genlab-lsh"][-1]]["qps"],
            "exact_qps": pick("genlab-exact", "exact")["qps"],
            "embed_texts_per_s": speed["genlab_texts_per_s"], "embed_min_cosine_vs_st": speed["min_cosine_vs_st"],
        },
        "peers": {
            "hnswlib_recall_at_10_ef64": pick("hnswlib", "ef=64")["recall@10"], "hnswlib_qps_ef64": pick("hnswlib", "ef=64")["qps"],
            "hnswlib_build_s": pick("hnswlib", "ef=64")["build_s"], "hnswlib_mem_mb": pick("hnswlib", "ef=64")["mem_mb"],
            "faiss_hnsw_recall_at_10_ef64": pick("faiss-hnsw", "ef=64")["recall@10"], "faiss_hnsw_qps_ef64": pick("faiss-hnsw", "ef=64")["qps"],
            "faiss_flat_qps": pick("faiss-flat", "exact")["qps"],
            "faiss_ivfpq_recall_at_10": pick("faiss-ivfpq", ivf_mid)["recall@10"], "faiss_ivfpq_qps": pick("faiss-ivfpq", ivf_mid)["qps"],
            "faiss_ivfpq_build_s": pick("faiss-ivfpq", ivf_mid)["build_s"],
            "sentence_transformers_texts_per_s": speed["st_texts_per_s"],
            "sweeps": {name: [[round(r, 4), round(q, 1)] for r, q in pts] for name, pts in sweeps.items()},
        },
        "ratios": {
            "hnsw_qps_vs_hnswlib_at_equal_recall": ours_at / hnswlib_at if hnswlib_at else None,
            "hnsw_qps_vs_faiss_hnsw_at_equal_recall": ours_at / faiss_at if faiss_at else None,
            "hnsw_build_time_vs_hnswlib": at["build_s"] / pick("hnswlib", "ef=64")["build_s"],
            "ivfpq_qps_vs_faiss": pick("genlab-ivfpq", ivf_mid)["qps"] / pick("faiss-ivfpq", ivf_mid)["qps"],
            "embed_speed_vs_sentence_transformers": speed["ratio"],
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
