"""`scu data prepare`: tokenize and pack a corpus once into an Arrow directory that `scu train` reuses."""

from __future__ import annotations

import argparse

from scu.config.schema import DataSection, TrainingSection


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare training data", description=__doc__)
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = sub.add_parser(
        "prepare",
        help="tokenize, split and pack a corpus into DIR (Arrow + prep.json)",
        description="Tokenize, split (by document, deterministic by seed) and pack a corpus into DIR. "
        "NAME is c4, wikitext-2, wikitext-103, fineweb-edu, slimpajama, any Hugging Face dataset id "
        "(NAME:SPLIT picks a split), a .txt/.jsonl/.json(.gz)/.parquet file, a folder of them, or a save_to_disk folder.",
    )
    p.add_argument("--dataset", required=True, metavar="NAME_OR_PATH", help="the corpus to prepare")
    p.add_argument("--tokenizer", required=True, metavar="ID_OR_PATH", help="the base model's tokenizer (directory or hub id)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (must not exist or be empty)")
    p.add_argument("--block-size", type=int, default=TrainingSection().block_size, help="tokens per block (default: %(default)s)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=DataSection().val_fraction,
                     help="fraction of documents held out for validation, 0 for none (default: %(default)s)")
    val.add_argument("--val", metavar="NAME_OR_PATH", help="a separate validation source; overlapping training documents "
                     "are removed (default: none, split by --val-fraction)")
    p.add_argument("--max-tokens", type=int,
                   help="take the longest prefix of whole documents with at most this many tokens (default: all)")
    p.add_argument("--val-max-tokens", type=int, help="the same cap for the --val source (default: all)")
    p.add_argument("--num-proc", type=int, default=1, help="tokenizer processes for datasets.map (default: %(default)s)")
    p.add_argument("--streaming", action="store_true", help="stream a hub dataset instead of downloading it whole (on by itself with --max-tokens)")
    p.add_argument("--seed", type=int, default=TrainingSection().seed, help="seed of the train/validation split (default: %(default)s)")
    p.add_argument("--text-field", help="column holding the text (default: text, or the named dataset's)")
    p.add_argument("--subset", help="hub dataset configuration (default: the named dataset's)")
    p.add_argument("--join-articles", action="store_true",
                   help="rows are WikiText lines (e.g. a downloaded wikitext parquet): join them into articles at ' = Title = ' lines")
    p.add_argument("--refuse-overlap", action="store_true", help="with --val: fail instead of removing overlapping training documents")
    p.add_argument("--overwrite", action="store_true", help="replace an existing prepared DIR")
    p.set_defaults(func=_prepare)


def _prepare(args: argparse.Namespace) -> int:
    from scu.data.prepare import prepare

    info = prepare(
        dataset=args.dataset,
        tokenizer=args.tokenizer,
        out=args.out,
        block_size=args.block_size,
        val_fraction=args.val_fraction,
        val=args.val,
        max_tokens=args.max_tokens,
        val_max_tokens=args.val_max_tokens,
        num_proc=args.num_proc,
        streaming=args.streaming,
        seed=args.seed,
        text_field=args.text_field,
        subset=args.subset,
        join_articles=args.join_articles,
        overwrite=args.overwrite,
        refuse_overlap=args.refuse_overlap,
    )
    train, val, dup = info["train"], info["validation"], info["duplicates"]
    print(f"train: {train['documents']} documents, {train['blocks']} blocks, tokens_per_epoch {info['tokens_per_epoch']}")
    if val is not None:
        print(f"validation: {val['documents']} documents, {val['blocks']} blocks ({val['block_tokens']} tokens)")
    print(
        f"duplicates: {dup['duplicate_documents']} exact-duplicate documents kept on one side, "
        f"{dup['removed_from_train_overlapping_val']} training documents removed for overlapping validation"
    )
    print(f"wrote {args.out} (use it as data.train_data)")
    return 0
