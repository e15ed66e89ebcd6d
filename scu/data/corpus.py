"""From the `data` config section to packed training and validation blocks (scu.data.text.TrainData)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scu import ScuError
from scu.data.chat import epoch_tokens, tokenize_examples
from scu.data.prepare import is_prepared, prepared_train_val
from scu.data.text import TrainData, load_documents, overlapping_documents, pack_documents, packing_of, split_documents

MLX_LM_TRAIN, MLX_LM_VALID = "train.jsonl", "valid.jsonl"  # mlx-lm's data folder (mlx_lm.lora --data DIR)


def resolve_mlx_lm_folder(data_cfg: Any) -> Any:
    """`data_cfg` with an mlx-lm data folder as train_data read as its train.jsonl, and its valid.jsonl as
    val_data unless val_data is set; so a folder made for mlx_lm.lora trains here unchanged."""
    folder = Path(data_cfg.train_data)
    if not (folder / MLX_LM_TRAIN).is_file():
        return data_cfg
    valid = folder / MLX_LM_VALID
    val_data = data_cfg.val_data or (str(valid) if valid.is_file() else None)
    return data_cfg.model_copy(update={"train_data": str(folder / MLX_LM_TRAIN), "val_data": val_data})


def load_train_val(data_cfg: Any, tokenizer: Any, block_size: int, seed: int) -> TrainData:
    """Load, separate (at document level) and pack the training and validation text."""
    data_cfg = resolve_mlx_lm_folder(data_cfg)
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
    one_text = packing_of(data_cfg.packing, [data_cfg.train_data] + ([data_cfg.val_data] if data_cfg.val_data else []))
    train_ids, trained = tokenize_examples(train_docs, tokenizer, data_cfg.train_on)
    train = pack_documents(train_ids, block_size, eos, trained, one_text)
    val = None
    if val_docs:
        val_ids, val_trained = tokenize_examples(val_docs, tokenizer, data_cfg.train_on)
        try:
            val = pack_documents(val_ids, block_size, eos, val_trained, one_text)
        except ScuError:
            raise ScuError(
                f"the validation text is shorter than one block of {block_size} tokens; "
                "give more validation data (data.val_data / data.val_fraction) or lower training.block_size"
            ) from None
        epoch_tokens(val, val_trained, "validation")  # refuses validation blocks without a loss target
    return TrainData(train, val, epoch_tokens(train, trained, "training"), len(train_docs), len(val_docs), rule)
