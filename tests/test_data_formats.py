"""Each data format: detection, normalization to the canonical record, and its errors."""

import pytest

from modelmill.data import (FORMATS, Format, Where, classification_prompt, detect_format, get_format,
                            load_file, register_format, to_messages)
from modelmill.errors import InputError

W = Where("data.jsonl", 3)


def norm(name, record, where=W):
    return FORMATS[name].normalize(record, where)


@pytest.mark.parametrize("record, name", [
    ({"instruction": "a", "output": "b"}, "alpaca"),
    ({"conversations": [{"from": "human", "value": "a"}]}, "sharegpt"),
    ({"messages": [{"role": "user", "content": "a"}]}, "messages"),
    ({"prompt": "a", "chosen": "b", "rejected": "c"}, "preference"),
    ({"text": "a"}, "text"),
    ({"text": "a", "label": 1}, "classification"),
])
def test_detect(record, name):
    assert detect_format(record, W).name == name


def test_detect_unknown_lists_formats():
    with pytest.raises(InputError) as e:
        detect_format({"question": "q", "reply": "r"}, W)
    msg = str(e.value)
    assert msg.startswith("data.jsonl:3:") and "['question', 'reply']" in msg
    assert "alpaca (instruction, input?, output)" in msg and "--field COLUMN=FIELD" in msg


def test_unknown_format_name_lists_known():
    with pytest.raises(InputError) as e:
        get_format("dolly")
    assert "unknown format 'dolly'" in str(e.value)
    assert all(name in e.value.fix for name in ("auto", "alpaca", "sharegpt", "messages", "preference"))


def test_alpaca_full():
    rec = norm("alpaca", {"instruction": "Translate", "input": "hola", "output": "hello",
                          "system": "Be brief.", "history": [["hi", "hello!"]], "id": 7})
    assert rec == {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"},
        {"role": "user", "content": "Translate\n\nhola"}, {"role": "assistant", "content": "hello"}],
        "meta": {"id": 7}}


def test_alpaca_without_input():
    rec = norm("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"})
    assert rec == {"messages": [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]}


def test_alpaca_missing_field():
    with pytest.raises(InputError) as e:
        norm("alpaca", {"instruction": "x", "outptu": "y"})
    # detection is by keys, but normalize is what a named --format runs
    assert str(e.value).startswith("data.jsonl:3: field 'output': missing. Fix:")
    assert e.value.field == "output" and e.value.line == 3


def test_alpaca_wrong_type():
    with pytest.raises(InputError) as e:
        norm("alpaca", {"instruction": "x", "output": 5})
    assert "field 'output': expected a string, got an integer" in str(e.value)


def test_alpaca_bad_history():
    with pytest.raises(InputError, match=r"history\[0\]"):
        norm("alpaca", {"instruction": "x", "output": "y", "history": [["only one"]]})


def test_sharegpt():
    rec = norm("sharegpt", {"id": "a1", "system": "sys", "conversations": [
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "a1"},
        {"from": "user", "value": "q2"}, {"from": "assistant", "value": "a2"}]})
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert rec["messages"][-1]["content"] == "a2" and rec["meta"] == {"id": "a1"}


def test_sharegpt_errors():
    with pytest.raises(InputError, match=r"conversations\[1\]\.from': unknown speaker 'bot'"):
        norm("sharegpt", {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]})
    with pytest.raises(InputError, match="ends with a user turn"):
        norm("sharegpt", {"conversations": [{"from": "human", "value": "q"}]})
    with pytest.raises(InputError, match="has no user turn"):
        norm("sharegpt", {"conversations": [{"from": "gpt", "value": "a"}]})
    with pytest.raises(InputError, match=r"conversations\[0\]\.value': expected a string"):
        norm("sharegpt", {"conversations": [{"from": "human", "value": 5}]})


def test_openai_messages_with_parts_weight_and_tools():
    rec = norm("messages", {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hi.", "weight": 0},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hi!", "weight": 1}],
        "tools": [{"type": "function", "function": {"name": "f"}}], "parallel_tool_calls": False})
    assert rec == {"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello, there"},
        {"role": "assistant", "content": "Hi.", "weight": 0},
        {"role": "user", "content": "Again"},
        {"role": "assistant", "content": "Hi!", "weight": 1}]}
    assert to_messages(rec, "chat") == rec["messages"]


def test_openai_messages_errors():
    with pytest.raises(InputError, match=r"messages\[1\]\.weight': expected 0 or 1"):
        norm("messages", {"messages": [{"role": "user", "content": "q"},
                                       {"role": "assistant", "content": "a", "weight": 2}]})
    with pytest.raises(InputError, match=r"messages\[0\]\.content\[1\]': only text parts"):
        norm("messages", {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "x"}}]}]})
    with pytest.raises(InputError, match="role 'tool' is not supported"):
        norm("messages", {"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"}]})
    with pytest.raises(InputError, match="field 'messages': expected a list, got a string"):
        norm("messages", {"messages": "hi"})


def test_preference_shapes():
    plain = norm("preference", {"prompt": "Q", "chosen": "good", "rejected": "bad", "score": 3})
    assert plain == {"prompt": [{"role": "user", "content": "Q"}], "chosen": "good", "rejected": "bad",
                     "meta": {"score": 3}}
    conv = norm("preference", {
        "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}]})
    assert conv["prompt"][0]["role"] == "system" and (conv["chosen"], conv["rejected"]) == ("good", "bad")
    implicit = norm("preference", {
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}]})
    assert implicit["prompt"] == [{"role": "user", "content": "Q"}] and implicit["chosen"] == "good"
    alpaca_style = norm("preference", {"instruction": "Do", "input": "x", "chosen": "a", "rejected": "b"})
    assert alpaca_style["prompt"] == [{"role": "user", "content": "Do\n\nx"}]


def test_preference_errors():
    with pytest.raises(InputError, match="field 'rejected': missing"):
        norm("preference", {"prompt": "Q", "chosen": "a"})
    with pytest.raises(InputError, match="field 'chosen': expected a string or a list of messages, got an integer"):
        norm("preference", {"prompt": "Q", "chosen": 1, "rejected": "b"})
    with pytest.raises(InputError, match="field 'prompt': missing"):
        norm("preference", {"chosen": "a", "rejected": "b"})
    with pytest.raises(InputError, match="field 'chosen': has no assistant message"):
        norm("preference", {"prompt": "Q", "chosen": [{"role": "user", "content": "x"}], "rejected": "b"})


def test_text_and_classification():
    assert norm("text", {"text": "corpus", "url": "u"}) == {"text": "corpus", "meta": {"url": "u"}}
    assert norm("classification", {"text": "t", "label": 2, "drug": "x"}) == {
        "text": "t", "label": "2", "meta": {"drug": "x"}}
    assert norm("classification", {"text": "t", "label": "pos"})["meta"] == {}
    with pytest.raises(InputError, match="field 'label': expected a string or an integer, got a number"):
        norm("classification", {"text": "t", "label": 0.5})
    with pytest.raises(InputError, match="field 'text': expected a string, got a list"):
        norm("text", {"text": ["a"]})


def test_classification_to_messages_uses_the_shared_prompt():
    rec = {"text": "Great stuff", "label": "positive", "meta": {}}
    msgs = to_messages(rec, "classification", labels=["negative", "positive"])
    assert msgs == [{"role": "user", "content": classification_prompt("Great stuff", ["negative", "positive"])},
                    {"role": "assistant", "content": "positive"}]
    assert msgs[0]["content"] == "Classify the text into one of: negative, positive.\n\nText: Great stuff"


def test_text_cannot_become_messages():
    with pytest.raises(InputError, match="text records cannot be turned into chat messages"):
        to_messages({"text": "x"}, "text")


def test_record_errors_name_the_record_for_json_arrays():
    with pytest.raises(InputError) as e:
        norm("text", {"text": 1}, Where("data.json", 4, "record"))
    assert str(e.value).startswith("data.json:4: field 'text': expected a string, got an integer (in record 4).")


def test_plugin_format_registers_like_builtins(tmp_path):
    class QA(Format):
        name, kind, fields = "qa", "chat", "q, a"

        def detect(self, record):
            return "q" in record and "a" in record

        def normalize(self, record, where):
            return {"messages": [{"role": "user", "content": record["q"]},
                                 {"role": "assistant", "content": record["a"]}]}

    register_format(QA())
    try:
        path = tmp_path / "qa.jsonl"
        path.write_text('{"q": "2+2?", "a": "4"}\n', encoding="utf-8")
        data = load_file(path)
        assert (data.format, data.kind) == ("qa", "chat")
        assert data.records[0]["messages"][1]["content"] == "4"
    finally:
        FORMATS.pop("qa")
