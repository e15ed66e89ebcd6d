"""From the `data` config section to packed training and validation blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scu import ScuError
from scu.data.prepare import is_prepared, prepared_train_val
from scu.data.text import load_documents, overlapping_documents, pack, split_documents, tokenize_documents


@dataclass
class TrainData:
    train: np.ndarray  # [n_blocks, block_size] int64
    val: np.ndarray | None
    tokens_per_epoch: int  # tokens in the packed training set
    train_docs: int
    val_docs: int
    split_rule: str


def load_train_val(data_cfg: Any, tokenizer: Any, block_size: int, seed: int) -> TrainData:
    """Load, separate (at document level) and pack the training and validation text."""
    if is_prepared(data_cfg.train_data) or (data_cfg.val_data and is_prepared(data_cfg.val_data)):
        return prepared_train_val(data_cfg, tokenizer, block_size)  # tokenized once by `scu data prepare`
    train_docs = load_documents(data_cfg.train_data, data_cfg.text_field, tokenizer)
    if data_cfg.val_data:
        val_docs = load_documents(data_cfg.val_data, data_cfg.text_field, tokenizer)
        shared = overlapping_documents(train_docs, val_docs)
        if shared:
            raise ScuError(
                f"{len(shared)} of {len(val_docs)} validation documents also occur in the training data; "
                "use a disjoint val_data file, or omit val_data to split off validation at document level"
            )
        rule = f"given: {data_cfg.val_data}"
    elif data_cfg.val_fraction > 0:
        train_docs, val_docs = split_documents(train_docs, data_cfg.val_fraction, seed)
        rule = f"document-level split, val_fraction={data_cfg.val_fraction}, seed={seed}"
    else:
        val_docs, rule = [], "none"
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ScuError("the tokenizer has no EOS token; use a tokenizer with eos_token set")
    train = pack(tokenize_documents(train_docs, tokenizer), block_size, eos)
    val = None
    if val_docs:
        try:
            val = pack(tokenize_documents(val_docs, tokenizer), block_size, eos)
        except ScuError:
            raise ScuError(
                f"the validation text is shorter than one block of {block_size} tokens; "
                "give more validation data (data.val_data / data.val_fraction) or lower training.block_size"
            ) from None
    return TrainData(train, val, int(train.size), len(train_docs), len(val_docs), rule)
