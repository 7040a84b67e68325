"""JSON mode and JSON schema decoding: whatever the model's logits say, the masked output parses.

Random logits stand in for a model that has no idea what JSON is; greedy decoding through the
mask must still produce valid JSON that fits the schema.
"""

from __future__ import annotations

import json

import pytest

from modelmill.serve.engine import EngineError

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "vip": {"type": "boolean"},
    },
    "required": ["name", "age", "vip"],
    "additionalProperties": False,
}
PAD = 61  # lm_head rows beyond the tokenizer, as in SmolLM2 (49152 rows); not a multiple of 32


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def vocab_size(tok) -> int:
    return len(tok) + PAD


@pytest.fixture(scope="module")
def grammars(tok, vocab_size):
    from modelmill.serve.structured import JsonGrammars

    return JsonGrammars(tok, vocab_size)


def _closers(tok) -> list[int]:
    """Tokens made only of closing characters: biasing them ends strings, arrays and objects."""
    return [i for i in range(len(tok))
            if (s := tok.decode([i]).strip()) and set(s) <= set('"}]')]


def _decode(tok, vocab_size, constraint, *, seed: int, extra_rows: int = 0, max_steps: int = 200):
    """Greedy decoding of random logits through the mask; returns (token ids, done).

    After 20 steps closing tokens and EOS get a growing bonus so that the walk ends soon; the
    mask still decides what is allowed, so the output is only ever what the grammar permits.
    """
    import torch

    from modelmill.serve.structured import apply_constraints

    gen = torch.Generator().manual_seed(seed)
    closers = torch.tensor(_closers(tok) + [tok.eos_token_id])
    specials = [i for i in tok.all_special_ids if i != tok.eos_token_id]
    ids: list[int] = []
    for step in range(max_steps):
        logits = torch.randn(1 + extra_rows, vocab_size, generator=gen)
        if step > 20:
            logits[0, closers] += 0.5 * (step - 20)
        apply_constraints(logits, [constraint] + [None] * extra_rows)
        assert torch.isinf(logits[0, specials]).all(), "special tokens must never be allowed"
        assert torch.isinf(logits[0, len(tok):]).all(), "ids past the tokenizer must never be allowed"
        token = int(logits[0].argmax())
        if token == tok.eos_token_id:
            assert constraint.done, "EOS was allowed before the JSON was complete"
            break
        constraint.accept(token)
        ids.append(token)
        if constraint.done:
            break
    return ids, constraint.done


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_json_object_mode_gives_an_object(grammars, tok, vocab_size, seed):
    c = grammars.constraint({})
    ids, done = _decode(tok, vocab_size, c, seed=seed)
    assert done
    value = json.loads(tok.decode(ids))
    assert isinstance(value, dict)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_schema_gives_the_required_keys_and_types(grammars, tok, vocab_size, seed):
    c = grammars.constraint(PERSON)
    ids, done = _decode(tok, vocab_size, c, seed=seed)
    assert done
    value = json.loads(tok.decode(ids))
    assert set(value) >= {"name", "age", "vip"} and set(value) <= set(PERSON["properties"])
    assert list(value) == [k for k in PERSON["properties"] if k in value]  # the schema's order
    assert isinstance(value["name"], str)
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool)
    assert isinstance(value["vip"], bool)
    assert all(isinstance(t, str) for t in value.get("tags", []))


def test_when_done_only_eos_is_allowed(grammars, tok, vocab_size):
    import torch

    from modelmill.serve.structured import apply_constraints

    c = grammars.constraint(None)
    for t in tok.encode('{"a": [1, "x"]}', add_special_tokens=False):
        assert not c.done
        c.accept(t)
    assert c.done
    logits = torch.zeros(1, vocab_size)
    apply_constraints(logits, [c])
    assert torch.isfinite(logits[0]).nonzero().flatten().tolist() == [tok.eos_token_id]
    c.accept(tok.eos_token_id)
    assert c.done


def test_a_complete_number_is_not_done_while_more_digits_may_follow(grammars, tok):
    c = grammars.constraint({"type": "integer"})
    for t in tok.encode("12", add_special_tokens=False):
        c.accept(t)
    assert not c.done  # "123" is still possible
    c.accept(tok.eos_token_id)
    assert c.done


def test_json_object_mode_starts_with_a_brace(grammars, tok, vocab_size):
    import torch

    from modelmill.serve.structured import apply_constraints

    logits = torch.zeros(1, vocab_size)
    apply_constraints(logits, [grammars.constraint({})])
    allowed = torch.isfinite(logits[0]).nonzero().flatten().tolist()
    assert allowed and all(tok.decode([i]).lstrip().startswith("{") or not tok.decode([i]).strip()
                           for i in allowed)
    assert any(tok.decode([i]).strip() == "{" for i in allowed)


def test_unconstrained_rows_are_left_unchanged(grammars, tok, vocab_size):
    import torch

    from modelmill.serve.structured import apply_constraints

    logits = torch.randn(4, vocab_size, generator=torch.Generator().manual_seed(3))
    before = logits.clone()
    c1, c3 = grammars.constraint(PERSON), grammars.constraint({})
    apply_constraints(logits, [None, c1, None, c3])
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    for row in (1, 3):
        allowed = torch.isfinite(logits[row])
        assert 0 < allowed.sum() < vocab_size
        assert torch.equal(logits[row][allowed], before[row][allowed])  # allowed values untouched
    apply_constraints(logits, [None] * 4)  # nothing to do
    assert torch.equal(logits[0], before[0])


def test_rows_advance_independently(grammars, tok, vocab_size):
    c1, c2 = grammars.constraint({}), grammars.constraint({})
    ids1, done1 = _decode(tok, vocab_size, c1, seed=5, extra_rows=2)
    assert done1 and isinstance(json.loads(tok.decode(ids1)), dict)
    assert not c2.done  # c2 shares the compiled grammar, not the state
    ids2, done2 = _decode(tok, vocab_size, c2, seed=6)
    assert done2 and isinstance(json.loads(tok.decode(ids2)), dict)


def test_a_rejected_token_is_an_internal_error(grammars, tok):
    c = grammars.constraint({})
    with pytest.raises(EngineError) as e:
        c.accept(tok.encode("}", add_special_tokens=False)[0])
    assert e.value.status == 500


@pytest.mark.parametrize("schema", [
    {"type": "foo"},
    {"type": "object", "properties": {"a": {"$ref": "#/definitions/missing"}}},
    {"type": "integer", "minimum": "zero"},
    ["not", "an", "object"],
])
def test_an_invalid_schema_is_a_400(grammars, schema):
    with pytest.raises(EngineError) as e:
        grammars.constraint(schema)
    assert e.value.status == 400 and e.value.param == "response_format"
    assert "schema" in e.value.message and ".cc:" not in e.value.message


def test_compiled_grammars_are_cached(grammars):
    import copy

    assert grammars.compiled(PERSON) is grammars.compiled(copy.deepcopy(PERSON))
    assert grammars.compiled({}) is grammars.compiled(None)
    assert grammars.compiled({}) is not grammars.compiled(PERSON)
    # property order changes the output, so it is a different grammar
    reordered = {**PERSON, "properties": dict(reversed(PERSON["properties"].items()))}
    assert grammars.compiled(reordered) is not grammars.compiled(PERSON)
