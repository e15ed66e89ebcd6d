"""Benchmark `scu data prepare`: peak memory on a >= 50 MB corpus, and throughput against plain tokenization.

The corpus is the shared WikiText + Shakespeare files, repeated with a different document order per
seed until it reaches --mb megabytes; it is written to a temporary directory and deleted afterwards.
The tokenizer is a byte-level BPE trained on the shared files (--vocab-size, default 32000, the size of
Llama-2's), so tokens per character are realistic.

Memory: `scu data prepare` runs as a subprocess on half of the corpus and on the whole of it; the
main process's RSS and the process tree's PSS are sampled every 50 ms. Bounded memory means the peak does not grow with the corpus.
For contrast, the in-memory path (load_documents -> tokenize_documents -> pack) runs the same way.

Throughput: in one process (imports excluded), arms interleaved per repeat:
  plain   tokenizer(batch of 1000 documents) over documents already in memory, nothing saved
  npK     prepare(..., num_proc=K): read, tokenize with datasets.map, hash, split, pack, save_to_disk
Reported: tokens/s per arm (median over repeats) and the median of per-repeat ratios to plain.

    python bench/data_prepare.py --skip-throughput --out bench/results/data_prepare_memory.json
    python bench/data_prepare.py --skip-memory --mb 20 --out bench/results/data_prepare_throughput.json
    python bench/data_prepare.py --skip-memory --mb 20 --single-thread --out bench/results/data_prepare_throughput_1thread.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from scu.report.records import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FILES = ["wikitext/wiki103_subset.txt", "wikitext/wiki2_valid.txt", "shakespeare/input.txt"]

BASELINE = """
import sys
import scu.cli, scu.data.cli
from scu.data.prepare import load_tokenizer
load_tokenizer(sys.argv[1])
"""

NAIVE = """
import sys
from scu.data.text import load_documents, pack, tokenize_documents
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[2])
blocks = pack(tokenize_documents(load_documents(sys.argv[1]), tok), int(sys.argv[3]), tok.eos_token_id)
print(blocks.shape)
"""


def build_corpus(path: Path, megabytes: float, seed0: int = 0) -> dict:
    from scu.data.text import load_documents

    docs = [d for f in FILES for d in load_documents(SHARED / f)]
    size, reps = 0, 0
    with path.open("w", encoding="utf-8") as f:
        while size < megabytes * 1e6:
            order = np.random.default_rng(seed0 + reps).permutation(len(docs))
            text = "\n\n".join(docs[i] for i in order) + "\n\n"
            f.write(text)
            size += len(text.encode())
            reps += 1
    return {"path": str(path), "bytes": path.stat().st_size, "repetitions": reps, "documents": reps * len(docs)}


def _rollup(pid: int) -> dict[str, int]:
    """Pss and Pss_Anon of a process, in bytes (Linux /proc/PID/smaps_rollup)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Pss", "Pss_Anon"):
                out[key] = int(rest.split()[0]) * 1024
    return out


def peak_memory(cmd: list[str], env: dict) -> dict:
    """Run cmd; every 50 ms sample the RSS of the main process and the PSS summed over it and its children.

    PSS (proportional set size) splits pages shared by forked workers among them, so the sum over
    the tree does not count the copy-on-write parent memory once per worker. Pss_Anon leaves out
    file-backed pages (memory-mapped Arrow files, shared libraries), which the kernel can drop.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = {"rss_main": 0, "Pss": 0, "Pss_Anon": 0}
    while proc.poll() is None:
        try:
            peak["rss_main"] = max(peak["rss_main"], root.memory_info().rss)
            total = {"Pss": 0, "Pss_Anon": 0}
            for p in [root] + root.children(recursive=True):
                try:
                    for k, v in _rollup(p.pid).items():
                        total[k] += v
                except OSError:
                    pass
            for k, v in total.items():
                peak[k] = max(peak[k], v)
        except psutil.Error:
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{err[-2000:]}")
    mb = {k: round(v / 2**20, 1) for k, v in peak.items()}
    return {"peak_pss_tree_mb": mb["Pss"], "peak_pss_anon_tree_mb": mb["Pss_Anon"], "peak_rss_main_mb": mb["rss_main"],
            "wall_s": round(time.perf_counter() - start, 2)}


def dir_mb(path: Path) -> float:
    return round(sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20, 1)


def memory(tmp: Path, corpora: dict[str, Path], tok_dir: Path, block_size: int, num_procs: list[int]) -> list[dict]:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    r = peak_memory([sys.executable, "-c", BASELINE, str(tok_dir)], env)
    r.update(arm="baseline: imports + tokenizer, no data")
    print(json.dumps(r), flush=True)
    rows = [r]
    for label, corpus in corpora.items():
        for k in num_procs:
            out = tmp / f"mem-{label}-{k}"
            cmd = [sys.executable, "-m", "scu.cli", "data", "prepare", "--dataset", str(corpus), "--tokenizer", str(tok_dir),
                   "--out", str(out), "--block-size", str(block_size), "--num-proc", str(k)]
            r = peak_memory(cmd, env)
            r.update(corpus=label, corpus_mb=round(corpus.stat().st_size / 1e6, 1), arm=f"scu data prepare --num-proc {k}",
                     prepared_dir_mb=dir_mb(out))
            print(json.dumps(r), flush=True)
            rows.append(r)
            shutil.rmtree(out)
        r = peak_memory([sys.executable, "-c", NAIVE, str(corpus), str(tok_dir), str(block_size)], env)
        r.update(corpus=label, corpus_mb=round(corpus.stat().st_size / 1e6, 1), arm="in memory: load_documents -> tokenize_documents -> pack")
        print(json.dumps(r), flush=True)
        rows.append(r)
    return rows


def throughput(tmp: Path, corpus: Path, tok_dir: Path, block_size: int, num_procs: list[int], repeats: int) -> dict:
    from transformers import AutoTokenizer

    from scu.data.prepare import prepare
    from scu.data.text import load_documents

    tok = AutoTokenizer.from_pretrained(tok_dir)
    docs = load_documents(corpus)
    arms = ["plain"] + [f"np{k}" for k in num_procs]
    seconds: dict[str, list[float]] = {a: [] for a in arms}
    tokens = None
    for rep in range(repeats):
        for arm in arms:
            t0 = time.perf_counter()
            if arm == "plain":
                n = 0
                for i in range(0, len(docs), 1000):
                    n += sum(len(x) for x in tok(docs[i : i + 1000], add_special_tokens=False)["input_ids"])
                tokens = n
            else:
                out = tmp / f"tp-{arm}-{rep}"
                info = prepare(str(corpus), str(tok_dir), out, block_size=block_size, num_proc=int(arm[2:]), progress=False)
                n = info["source"]["tokens_read"] - info["source"]["documents_read"]  # without the EOS tokens
                shutil.rmtree(out)
            seconds[arm].append(time.perf_counter() - t0)
            print(f"repeat {rep} {arm}: {n} tokens in {seconds[arm][-1]:.1f} s = {n / seconds[arm][-1]:,.0f} tok/s", flush=True)
    result = {"tokens": tokens, "repeats": repeats, "seconds": seconds,
              "tokens_per_s": {a: round(tokens / statistics.median(s)) for a, s in seconds.items()},
              "speed_vs_plain_median_of_ratios": {
                  a: round(statistics.median(p / s for p, s in zip(seconds["plain"], seconds[a])), 3) for a in arms[1:]}}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=50.0, help="corpus size in MB (at least 50 for the memory claim)")
    ap.add_argument("--vocab-size", type=int, default=32000)
    ap.add_argument("--block-size", type=int, default=1024)
    ap.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--single-thread", action="store_true",
                    help="TOKENIZERS_PARALLELISM=false in every arm: one core per process, to see --num-proc scaling")
    ap.add_argument("--out", type=Path, required=True, help="results JSON, e.g. bench/results/data_prepare_memory.json")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.single_thread:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"

    from scu.data.text import load_documents
    from scu.models.tiny import train_tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="scu-bench-prepare-"))
    try:
        tok_dir = tmp / "tokenizer"
        t0 = time.perf_counter()
        train_tokenizer([d for f in FILES for d in load_documents(SHARED / f)], args.vocab_size).save_pretrained(tok_dir)
        print(f"tokenizer: vocab {args.vocab_size}, trained in {time.perf_counter() - t0:.1f} s", flush=True)
        corpora = {"half": tmp / "half.txt", "full": tmp / "full.txt"}
        built = {"half": build_corpus(corpora["half"], args.mb / 2), "full": build_corpus(corpora["full"], args.mb)}
        print(json.dumps(built), flush=True)
        result = {
            "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
            "tokenizer": {"kind": "byte-level BPE (scu.models.tiny.train_tokenizer)", "vocab_size": args.vocab_size},
            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM", "default (all cores within a batch)"),
            "block_size": args.block_size,
            "corpora": {k: {kk: vv for kk, vv in v.items() if kk != "path"} for k, v in built.items()},
            "memory": None if args.skip_memory else memory(tmp, corpora, tok_dir, args.block_size, args.num_proc),
            "throughput": None if args.skip_throughput else throughput(tmp, corpora["full"], tok_dir, args.block_size, args.num_proc, args.repeats),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)
        print(json.dumps({k: result[k] for k in ("memory", "throughput")}, indent=2))
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
