"""Reading documents: a JSONL string may hold U+2028/U+2029 unescaped (valid JSON), which is not a line break."""

import json

from scu.data.text import load_documents


def test_jsonl_text_with_unicode_line_separators_is_one_document(tmp_path):
    text = "first part\u2028second part\u2029third"
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": text}, ensure_ascii=False) + "\n" + json.dumps({"text": "next"}) + "\n",
                    encoding="utf-8")
    assert load_documents(path) == [text, "next"]
