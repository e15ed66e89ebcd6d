"""Which tokens of a chat example are the assistant's: supervised fine-tuning trains on those only.

The mask comes from the tokenizer's chat template. A template with `{% generation %}` blocks marks the
assistant's tokens itself (`apply_chat_template(..., return_assistant_tokens_mask=True)`). For any other
template the conversation is rendered prefix by prefix: assistant turn i is the text that
`messages[: i + 1]` adds to `messages[:i]` rendered with the generation prompt, i.e. the reply and its
end-of-turn marker, without the role header the prompt already holds. Tokens overlapping that text
(character offsets of the whole rendering) are the assistant's.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from scu import ScuError
from scu.data.text import Blocks, Chat, tokenize_documents

GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")  # how transformers detects the markers
TRAIN_ON = ("assistant", "all")


def _template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    return template.get("default", "") if isinstance(template, dict) else template or ""


def assistant_tokens(chat: Chat, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """The conversation's token ids as its chat template renders it, and which of them are the assistant's."""
    if GENERATION_BLOCK.search(_template(tokenizer)):
        out = tokenizer.apply_chat_template(chat.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return list(out["input_ids"]), [bool(m) for m in out["assistant_masks"]]
    return _prefix_mask(chat, tokenizer)


def _render(tokenizer: Any, messages: list[dict[str, Any]], prompt: bool) -> str:
    if not messages and not prompt:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)


def _prefix_mask(chat: Chat, tokenizer: Any) -> tuple[list[int], list[bool]]:
    """The mask of a template without generation markers, from its renderings of growing prefixes."""
    if not getattr(tokenizer, "is_fast", False):
        raise ScuError(f"{chat.where}: finding assistant tokens needs a fast tokenizer (character offsets) or a chat "
                       "template with {% generation %} markers; set data.train_on: all to train on every token")
    spans = []
    for i, message in enumerate(chat.messages):
        if message.get("role") != "assistant":
            continue
        before, after = _render(tokenizer, chat.messages[:i], True), _render(tokenizer, chat.messages[: i + 1], False)
        if not (after.startswith(before) and chat.startswith(after)):
            raise ScuError(
                f"{chat.where}: the chat template does not render this conversation turn by turn (an earlier part changes "
                "when later turns are added), so its assistant tokens cannot be found; add {% generation %} markers to "
                "the template or set data.train_on: all"
            )
        spans.append((len(before), len(after)))
    enc = tokenizer(str(chat), add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(lo < end and hi > start for start, end in spans) for lo, hi in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def tokenize_examples(
    docs: Sequence[str], tokenizer: Any, train_on: str = "assistant"
) -> tuple[list[list[int]], list[list[bool] | None]]:
    """Token ids per document (as `tokenize_documents`), and per document which tokens the loss is taken on:
    None (every token) for text, and for `Chat` examples with train_on `assistant`, the assistant's tokens."""
    if train_on not in TRAIN_ON:
        raise ScuError(f"data.train_on must be one of {', '.join(TRAIN_ON)} (got {train_on!r})")
    as_chat = [train_on == "assistant" and isinstance(d, Chat) for d in docs]
    texts = [d for d, c in zip(docs, as_chat) if not c]
    plain = iter(tokenize_documents(texts, tokenizer) if texts else [])
    out = [assistant_tokens(d, tokenizer) if c else (next(plain), None) for d, c in zip(docs, as_chat)]
    return [ids for ids, _ in out], [mask for _, mask in out]


def epoch_tokens(blocks: Blocks, trained: Sequence[Sequence[bool] | None], role: str) -> int:
    """tokens_per_epoch of `blocks`: the packed tokens, as always for text; the loss targets when chat examples
    are masked to their assistant tokens, so that ParamBPT is per token of the loss DataBPT measures.
    Blocks with no target at all are refused (`role`: "training" or "validation", for the message)."""
    if all(mask is None for mask in trained):
        return int(blocks.ids.size)
    targets = blocks.loss_tokens()
    if targets == 0:
        raise ScuError(f"the {role} data has no assistant tokens in any block (data.train_on: assistant); "
                       f"give {role} conversations with assistant turns, or set data.train_on: all")
    return targets
