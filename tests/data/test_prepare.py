"""`scu data prepare`: exact agreement with direct tokenization, separation, refusal of mismatches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from scu import ScuError
from scu.cli import main
from scu.data.prepare import load_prepared, prepare, read_info
from scu.data.text import load_documents, normalized_hash, pack, tokenize_documents

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def tok(tiny_base: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture(scope="module")
def shared_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 150 kB of the shared WikiText-103 subset and of tiny-shakespeare, one file each."""
    d = tmp_path_factory.mktemp("shared")
    for name in ("wikitext/wiki103_subset.txt", "shakespeare/input.txt"):
        text = (SHARED / name).read_text(encoding="utf-8")[:150_000]
        (d / Path(name).name).write_text(text, encoding="utf-8")
    return d


def side_documents(out: Path, split: str, tok) -> list[str]:
    """Decode a prepared side back into documents (the last, cut one is dropped)."""
    import datasets

    ids = datasets.load_from_disk(str(out))[split].data.column("input_ids").combine_chunks().flatten().to_numpy()
    cuts = np.flatnonzero(ids == tok.eos_token_id)
    segments = np.split(ids, cuts + 1)[:-1]
    return [tok.decode(s[:-1]) for s in segments]


@pytest.mark.parametrize("name", ["wiki103_subset.txt", "input.txt"])
def test_token_counts_match_direct_tokenization(shared_slice: Path, tiny_base: Path, tok, tmp_path: Path, name: str) -> None:
    src = shared_slice / name
    info = prepare(str(src), str(tiny_base), tmp_path / "out", block_size=64, val_fraction=0, progress=False, chunk_chars=40_000)
    docs = load_documents(src)
    token_docs = tokenize_documents(docs, tok)
    direct = pack(token_docs, 64, tok.eos_token_id)
    train, val, tokens_per_epoch, _ = load_prepared(tmp_path / "out", tok, 64)
    assert val is None
    assert info["train"]["documents"] == len(docs)
    assert info["train"]["tokens"] == sum(len(d) + 1 for d in token_docs)
    assert tokens_per_epoch == direct.size == info["tokens_per_epoch"]
    assert train.dtype == np.int64 and np.array_equal(train, direct)


def test_split_is_by_document_deterministic_and_independent_of_num_proc(shared_slice: Path, tiny_base: Path, tok, tmp_path: Path) -> None:
    src = shared_slice / "input.txt"
    a = prepare(str(src), str(tiny_base), tmp_path / "a", block_size=32, val_fraction=0.2, seed=3, num_proc=2, progress=False, chunk_chars=30_000)
    b = prepare(str(src), str(tiny_base), tmp_path / "b", block_size=32, val_fraction=0.2, seed=3, num_proc=1, progress=False, chunk_chars=1 << 20)
    for key in ("train", "validation", "duplicates", "tokens_per_epoch"):
        assert a[key] == b[key]
    ta, va, _, _ = load_prepared(tmp_path / "a", tok, 32)
    tb, vb, _, _ = load_prepared(tmp_path / "b", tok, 32)
    assert np.array_equal(ta, tb) and np.array_equal(va, vb)

    docs = load_documents(src)
    tokens = sum(len(d) + 1 for d in tokenize_documents(docs, tok))
    assert a["train"]["documents"] + a["validation"]["documents"] == len(docs)
    assert a["train"]["tokens"] + a["validation"]["tokens"] == tokens
    assert 0.1 < a["validation"]["documents"] / len(docs) < 0.3
    # the split is by whole documents: every decoded validation document is one of the source documents
    source = {normalized_hash(d) for d in docs}
    assert all(normalized_hash(d) in source for d in side_documents(tmp_path / "a", "validation", tok))
    c = prepare(str(src), str(tiny_base), tmp_path / "c", block_size=32, val_fraction=0.2, seed=4, progress=False)
    assert c["validation"] != a["validation"]  # another seed, another split


def test_max_tokens_takes_a_whole_document_prefix(shared_slice: Path, tiny_base: Path, tok, tmp_path: Path) -> None:
    src = shared_slice / "wiki103_subset.txt"
    cost = np.cumsum([len(d) + 1 for d in tokenize_documents(load_documents(src), tok)])
    budget = int(cost[40] + 5)  # 41 documents fit, the 42nd does not
    info = prepare(str(src), str(tiny_base), tmp_path / "out", block_size=16, val_fraction=0, max_tokens=budget, progress=False, chunk_chars=5_000)
    assert info["source"]["documents_read"] == 41
    assert info["source"]["tokens_read"] == info["train"]["tokens"] == cost[40]
    assert info["source"]["truncated_by_max_tokens"]


def constructed_corpus(rng: np.random.Generator, n: int, prefix: str) -> list[str]:
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta", "lambda", "zeta"]
    return [f"{prefix} {i}: " + " ".join(rng.choice(words, size=int(rng.integers(15, 40)))) + "." for i in range(n)]


def test_exact_duplicates_never_straddle_the_split(tiny_base: Path, tok, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    unique = constructed_corpus(rng, 60, "doc")
    # three copies of each: verbatim, upper-cased, and with its white space changed
    docs = [v for d in unique for v in (d, d.upper(), d.replace(" ", "  \t "))]
    docs = [docs[i] for i in rng.permutation(len(docs))]
    (tmp_path / "c.txt").write_text("\n\n".join(docs))
    info = prepare(str(tmp_path / "c.txt"), str(tiny_base), tmp_path / "out", block_size=8, val_fraction=0.5, seed=1, progress=False)
    assert info["duplicates"]["duplicate_documents"] == 120
    assert info["duplicates"]["cross_split_documents"] == 0
    train = {normalized_hash(d) for d in side_documents(tmp_path / "out", "train", tok)}
    val = {normalized_hash(d) for d in side_documents(tmp_path / "out", "validation", tok)}
    assert train and val and not train & val
    assert info["validation"]["documents"] % 3 == 0 and info["train"]["documents"] % 3 == 0


def test_separate_validation_source_overlap_is_removed_and_counted(tiny_base: Path, tok, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    val_docs = constructed_corpus(rng, 20, "held out") + ["ACT I.", "Exeunt."]  # short ones may repeat
    train_docs = constructed_corpus(rng, 80, "train")
    leaked = [val_docs[i].upper() for i in (0, 3, 7, 11, 19)] + ["ACT I.", "Exeunt."]
    mixed = train_docs + leaked
    mixed = [mixed[i] for i in rng.permutation(len(mixed))]
    (tmp_path / "train.txt").write_text("\n\n".join(mixed))
    (tmp_path / "val.txt").write_text("\n\n".join(val_docs))
    info = prepare(str(tmp_path / "train.txt"), str(tiny_base), tmp_path / "out", block_size=8, val=str(tmp_path / "val.txt"), progress=False)
    assert info["duplicates"]["removed_from_train_overlapping_val"] == 5
    assert info["train"]["documents"] == len(mixed) - 5
    assert info["validation"]["documents"] == len(val_docs)
    long_val = {normalized_hash(d) for d in val_docs if len(d) >= 64}
    assert not long_val & {normalized_hash(d) for d in side_documents(tmp_path / "out", "train", tok)}
    with pytest.raises(ScuError, match="also occur in the validation source"):
        prepare(str(tmp_path / "train.txt"), str(tiny_base), tmp_path / "out2", block_size=8, val=str(tmp_path / "val.txt"), refuse_overlap=True, progress=False)
    assert not (tmp_path / "out2").exists()


def test_mismatched_tokenizer_or_block_size_is_refused(shared_slice: Path, tiny_base: Path, tok, tmp_path: Path) -> None:
    from scu.models.tiny import train_tokenizer

    other = train_tokenizer(load_documents(shared_slice / "input.txt")[:300], vocab_size=300)
    other.save_pretrained(tmp_path / "other_tok")
    src = str(shared_slice / "input.txt")
    prepare(src, str(tmp_path / "other_tok"), tmp_path / "other", block_size=32, val_fraction=0, progress=False)
    with pytest.raises(ScuError, match=r"prepared with tokenizer .*other_tok.*re-run scu data prepare --tokenizer"):
        load_prepared(tmp_path / "other", tok, 32)
    prepare(src, str(tiny_base), tmp_path / "mine", block_size=32, val_fraction=0, progress=False)
    with pytest.raises(ScuError, match="block_size 32, but training.block_size is 64"):
        load_prepared(tmp_path / "mine", tok, 64)
    train, _, _, info = load_prepared(tmp_path / "mine", tok, 32)  # same tokenizer, loaded anew: accepted
    assert train.shape[1] == 32 and info["tokenizer"]["name"] == str(tiny_base)


def test_cli_prepares_and_refuses_to_clobber(shared_slice: Path, tiny_base: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    argv = ["data", "prepare", "--dataset", str(shared_slice / "input.txt"), "--tokenizer", str(tiny_base), "--out", str(out), "--block-size", "32"]
    assert main(argv) == 0
    info = read_info(out)
    assert f"tokens_per_epoch {info['tokens_per_epoch']}" in capsys.readouterr().out
    assert info["split"]["val_fraction"] == 0.05 and info["versions"]["datasets"]
    before = json.loads((out / "prep.json").read_text())
    assert main(argv) == 2  # exists: refused, untouched
    assert "already exists" in capsys.readouterr().err
    assert json.loads((out / "prep.json").read_text()) == before
    assert main(argv + ["--overwrite", "--val-fraction", "0"]) == 0
    assert read_info(out)["validation"] is None
    assert main(["data", "prepare", "--dataset", str(tmp_path / "missing.txt"), "--tokenizer", str(tiny_base), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no work or staging folders left behind


def test_work_folders_of_killed_runs_are_cleaned_up(tiny_base: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.work-{dead.pid}-abc123"  # what `data prepare` killed mid-way leaves
    live = tmp_path / f".out.work-{os.getpid()}-def456"  # a prepare still running in this process
    for d in (stale, live):
        (d / "out").mkdir(parents=True)
    (tmp_path / "c.txt").write_text("\n\n".join(f"document number {i} with a few words" for i in range(50)))
    prepare(str(tmp_path / "c.txt"), str(tiny_base), tmp_path / "out", block_size=8, val_fraction=0, progress=False)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "c.txt", "out"])


def test_non_utf8_text_is_an_error_not_replacement_characters(tiny_base: Path, tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_bytes("caf\xe9\n\nmore".encode("latin-1"))
    with pytest.raises(ScuError, match="not UTF-8 text"):
        prepare(str(tmp_path / "c.txt"), str(tiny_base), tmp_path / "out", block_size=4, val_fraction=0, progress=False)
