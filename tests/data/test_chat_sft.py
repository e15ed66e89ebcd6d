"""SFT on chat data: the loss on the assistant's tokens only (from the chat template, with or without
{% generation %} markers), data.train_on: all for every token, and packed documents that never see each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scu import ScuError
from scu.config.schema import DataSection
from scu.data.chat import assistant_tokens, tokenize_examples
from scu.data.corpus import load_train_val
from scu.data.prepare import prepare
from scu.data.text import Blocks, Chat, load_documents, pack_documents

# The tiny base's template (no generation markers), and the same rendering with the reply marked.
PLAIN = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
         "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
MARKED = ("{% for m in messages %}<|{{ m['role'] }}|>\n{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}\n"
          "{% endgeneration %}{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}"
          "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def conversation(k: int) -> list[dict[str, str]]:
    """Prompts written in capitals (QUESTION...), replies in lower case: a target token holding a capital Q is a prompt's."""
    return [
        {"role": "system", "content": f"QUIET SYSTEM PROMPT {k}"},
        {"role": "user", "content": f"QUESTION NUMBER {k}: WHAT IS {k} PLUS {k}?"},
        {"role": "assistant", "content": f"the answer is {2 * k}, since {k} and {k} make {2 * k}."},
        {"role": "user", "content": "QUITE SO. AND TWICE THAT?"},
        {"role": "assistant", "content": f"twice that is {4 * k}."},
    ]


@pytest.fixture
def tok(tiny_base: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert tokenizer.chat_template == PLAIN
    return tokenizer


@pytest.fixture
def chat_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": conversation(k)}) + "\n" for k in range(1, 31)))
    return path


def chat(tok, k: int = 3) -> Chat:
    messages = conversation(k)
    return Chat(tok.apply_chat_template(messages, tokenize=False), messages, "test:1")


@pytest.mark.parametrize("template", [PLAIN, MARKED])
def test_assistant_tokens_are_the_replies_and_their_turn_ends(tok, template):
    tok.chat_template = template
    ids, mask = assistant_tokens(chat(tok), tok)
    assert ids == tok(str(chat(tok)), add_special_tokens=False)["input_ids"]
    picked = [i for i, m in zip(ids, mask) if m]
    assert tok.decode(picked) == "the answer is 6, since 3 and 3 make 6.\ntwice that is 12.\n"


def test_generation_markers_and_the_prefix_fallback_give_the_same_mask(tok):
    tok.chat_template = MARKED
    marked_text = tok.apply_chat_template(conversation(5), tokenize=False)
    marked = assistant_tokens(chat(tok, 5), tok)
    tok.chat_template = PLAIN
    assert tok.apply_chat_template(conversation(5), tokenize=False) == marked_text  # the same rendering
    assert assistant_tokens(chat(tok, 5), tok) == marked


def test_assistant_only_masking_leaves_prompt_tokens_out_of_the_loss(tok, chat_jsonl):
    data = load_train_val(DataSection(train_data=str(chat_jsonl), val_fraction=0.1), tok, 64, seed=0)
    blocks = data.train_blocks
    targets = blocks.ids[blocks.loss_mask]
    assert targets.size == data.tokens_per_epoch == blocks.loss_tokens() > 0  # ParamBPT per assistant token
    text = tok.decode(targets.tolist())
    assert "the answer is" in text and "twice that is" in text
    assert not any(c in text for c in "QUESTIONPLSY")  # no prompt token (capitals) is ever a target
    everything = load_train_val(DataSection(train_data=str(chat_jsonl), val_fraction=0.1, train_on="all"), tok, 64, seed=0)
    all_rows = {tuple(row) for row in everything.train.tolist()}
    assert all(tuple(row) in all_rows for row in data.train.tolist())  # the same blocks, less those of prompts only
    assert np.array_equal(everything.train_blocks.loss_mask, everything.train_blocks.positions > 0)
    assert everything.tokens_per_epoch == everything.train.size
    assert data.val_blocks is not None and 0 < data.val_blocks.loss_tokens() < everything.val_blocks.loss_tokens()


def test_text_documents_train_on_every_token_as_before(tok, pydoc_txt):
    data = load_train_val(DataSection(train_data=str(pydoc_txt), val_fraction=0.0), tok, 64, seed=0)
    assert data.tokens_per_epoch == data.train.size
    assert np.array_equal(data.train_blocks.loss_mask, data.train_blocks.positions > 0)


def test_packing_restarts_positions_at_every_document_and_block():
    blocks = pack_documents([[5, 6], [7, 8, 9, 10], [11]], block_size=4, eos_id=0, trained=[None, [False, True, True, False], None])
    assert blocks.ids.tolist() == [[5, 6, 0, 7], [8, 9, 10, 0]]  # 3 + 5 + 2 = 10 tokens: two blocks, tail dropped
    assert blocks.positions.tolist() == [[0, 1, 2, 0], [0, 1, 2, 3]]  # doc 2 starts at 0, continues from 0 in block 2
    # targets: never position 0; doc 2's untrained tokens and the EOS after a masked document are out
    assert blocks.loss_mask.tolist() == [[False, True, True, False], [False, True, False, False]]
    # a block with no target (a long prompt) is left out: blocks are independent
    idle = pack_documents([[5, 6], [7, 8, 9, 10, 11, 12], [13, 14]], block_size=4, eos_id=0,
                          trained=[None, [False] * 6, None])
    assert idle.ids.tolist() == [[5, 6, 0, 7], [12, 0, 13, 14]]  # [8, 9, 10, 11] had nothing to learn
    assert idle.positions.tolist() == [[0, 1, 2, 0], [0, 1, 0, 1]]
    assert idle.loss_mask.tolist() == [[False, True, True, False], [False, False, False, True]]


def test_positions_keep_packed_documents_apart_in_the_model(tok):
    """With the position ids of `Blocks` and no cache, each packed document's logits are those it has alone."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from scu.eval.bpt import block_bpt, cross_entropy_sum

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=4)).eval()
    docs = [[3, 4, 5, 6, 7], [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]]  # 6 + 11 tokens with EOS: one block of 17
    blocks = pack_documents(docs, block_size=17, eos_id=1)
    batch = {k: torch.from_numpy(v) for k, v in blocks.batch(slice(None)).items()}
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        second = torch.tensor([docs[1] + [1]])
        alone = model(input_ids=second).logits
        leaky = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits  # the cache skips packing
        assert torch.allclose(packed[:, 6:], alone, atol=1e-5)
        assert not torch.allclose(leaky[:, 6:], alone, atol=1e-3)
        ce = cross_entropy_sum(packed, batch["input_ids"], batch["loss_mask"])
        first = torch.tensor([docs[0] + [1]])
        expected = cross_entropy_sum(model(input_ids=first).logits, first) + cross_entropy_sum(alone, second)
    assert ce.item() == pytest.approx(expected.item(), rel=1e-5)  # each document's own CE, no cross-document term
    assert block_bpt(model, blocks) == pytest.approx(expected.item() / blocks.loss_tokens() / np.log(2), rel=1e-5)
    assert blocks.loss_tokens() == 5 + 10


def test_conversations_without_replies_are_refused(tok, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"messages": conversation(k)[:2]}) + "\n" for k in range(40)))
    with pytest.raises(ScuError, match="no assistant tokens in any block .* or set data.train_on: all") as e:
        load_train_val(DataSection(train_data=str(path), val_fraction=0.0), tok, 32, seed=0)
    assert "\n" not in str(e.value)


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_the_fix(tok):
    # the system prompt says how many turns follow: every prefix renders it differently
    tok.chat_template = ("{{ messages | length }} turns\n{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    with pytest.raises(ScuError, match=r"test:1: the chat template does not render this conversation turn by turn.*"
                                       r"generation %\} markers .* or set data.train_on: all") as e:
        tokenize_examples([chat(tok)], tok, "assistant")
    assert "\n" not in str(e.value)


def test_prepared_chat_is_refused_for_assistant_only_and_positions_follow_documents(tok, tiny_base, chat_jsonl, tmp_path, pydoc_txt):
    prepare(str(chat_jsonl), str(tiny_base), tmp_path / "chat", block_size=64, val_fraction=0, progress=False)
    with pytest.raises(ScuError, match="prepared from 30 chat conversations .* set data.train_on: all"):
        load_train_val(DataSection(train_data=str(tmp_path / "chat")), tok, 64, seed=0)
    assert load_train_val(DataSection(train_data=str(tmp_path / "chat"), train_on="all"), tok, 64, seed=0).train.size > 0

    prepare(str(pydoc_txt), str(tiny_base), tmp_path / "text", block_size=64, val_fraction=0, progress=False)
    for packing in ("auto", "documents"):  # a prepared .txt packs as the raw .txt does, whichever the packing
        prepared = load_train_val(DataSection(train_data=str(tmp_path / "text"), packing=packing), tok, 64, seed=0).train_blocks
        raw = load_train_val(DataSection(train_data=str(pydoc_txt), val_fraction=0, packing=packing), tok, 64, seed=0).train_blocks
        for field in ("ids", "positions", "loss_mask"):
            assert np.array_equal(getattr(prepared, field), getattr(raw, field)), (packing, field)
    assert (prepared.positions == 0).sum() > len(prepared)  # documents: they start inside blocks, at position 0


def test_plain_text_packs_as_one_stream_and_rows_as_documents_by_default(tok, pydoc_txt, chat_jsonl):
    text = load_train_val(DataSection(train_data=str(pydoc_txt), val_fraction=0.1), tok, 64, seed=0)
    for blocks in (text.train_blocks, text.val_blocks):  # auto, .txt: positions restart at block starts only
        assert np.array_equal(blocks.positions, np.broadcast_to(np.arange(64), blocks.ids.shape))
        assert np.array_equal(blocks.loss_mask, blocks.positions > 0)
    docs = load_train_val(DataSection(train_data=str(pydoc_txt), val_fraction=0.1, packing="documents"), tok, 64, seed=0)
    assert np.array_equal(docs.train, text.train)  # the same tokens, read apart
    assert (docs.train_blocks.positions[:, 1:] == 0).any()
    rows = load_train_val(DataSection(train_data=str(chat_jsonl), val_fraction=0, train_on="all"), tok, 64, seed=0)
    assert (rows.train_blocks.positions[:, 1:] == 0).any()  # auto, .jsonl: each row to itself
    stream = load_train_val(DataSection(train_data=str(chat_jsonl), val_fraction=0, train_on="all", packing="stream"),
                            tok, 64, seed=0)
    assert not (stream.train_blocks.positions[:, 1:] == 0).any()


def test_chat_rows_stay_strings_for_every_other_reader(tok, chat_jsonl):
    docs = load_documents(chat_jsonl, tokenizer=tok)
    assert all(isinstance(d, Chat) and isinstance(d, str) for d in docs)
    assert docs[0] == tok.apply_chat_template(conversation(1), tokenize=False)
    assert isinstance(Blocks(np.zeros((1, 2), np.int64), np.zeros((1, 2), np.int32), np.zeros((1, 2), bool)).batch([0])["position_ids"][0, 0], np.int64)
