"""Reranking: a slower, finer look at the top few candidates.

First-stage retrieval compresses a whole chunk into one vector (or a bag of words) so it can search
thousands quickly. A reranker reads the query *with* each of the top ~20 candidates and reorders
them. Two kinds here:

    cross-encoder   query and chunk through one transformer together; the strongest, but none ships
                    on PyPI, so it is used only when a hub or a local directory has one:
                    --reranker cross-encoder/ms-marco-MiniLM-L6-v2 (or a path)
    maxsim          (the offline default) late interaction, ColBERT's scoring over the bundled
                    MiniLM's *token* embeddings: every query token finds its best-matching chunk token,
                    and the chunk's score is the mean of those best similarities. Words are matched
                    one by one, in context, instead of through one averaged vector.

    llm             the chat model as a pointwise relevance judge: for each candidate, the
                    probability it gives "yes" against "no" to "does this passage answer the
                    question?" (one forward pass per candidate, no generation). The field's
                    other offline option; at 135M parameters it is measured, not assumed

Whether a reranker earns its place is a measurement, not a belief: tune.py scores `rerank`
against `hybrid` on the same dev questions, and the pipeline uses it only if it wins there.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.console import BadInput


class MaxSimReranker:
    name = "maxsim"

    def __init__(self, max_cache: int = 4096):
        self._cache: dict[str, Any] = {}
        self.max_cache = max_cache

    def _token_vectors(self, texts: Sequence[str]) -> list[Any]:
        import torch

        from shared.models import load_embedder

        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > self.max_cache:
                self._cache.clear()
            encoded = load_embedder().encode(missing, output_value="token_embeddings", batch_size=32,
                                             show_progress_bar=False)  # fmt: skip
            for text, vectors in zip(missing, encoded, strict=True):
                self._cache[text] = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return [self._cache[t] for t in texts]

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """For each text: mean over query tokens of the best cosine similarity to any of its tokens."""
        if not texts:
            return []
        query_vectors = self._token_vectors([query])[0]
        return [float((query_vectors @ doc.T).max(dim=1).values.mean()) for doc in self._token_vectors(texts)]


class CrossEncoderReranker:
    def __init__(self, name_or_path: str):
        from sentence_transformers import CrossEncoder

        self.name = name_or_path
        try:
            self.model = CrossEncoder(name_or_path, device="cpu")
        except Exception as e:  # no hub, a wrong path: say so in one line
            raise BadInput(f"could not load cross-encoder {name_or_path!r} ({type(e).__name__}); give a local "
                           "directory, or use the offline default --reranker maxsim") from None  # fmt: skip

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        if not texts:
            return []
        return [float(s) for s in self.model.predict([(query, t) for t in texts], show_progress_bar=False)]


class LLMReranker:
    """Pointwise relevance from the chat model's next-token distribution: P("yes") / (P("yes") + P("no"))."""

    name = "llm"

    def __init__(self, chat_model: Any = None, max_chars: int = 700):
        self.chat_model, self.max_chars = chat_model, max_chars

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        from stage3_retrieval.reflect import yes_logprob

        if self.chat_model is None:
            from shared.chat import LocalChatModel

            self.chat_model = LocalChatModel()
        return [
            yes_logprob(self.chat_model, relevance_messages(query, text[: self.max_chars])) for text in texts
        ]


def relevance_messages(query: str, text: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "You judge whether a passage answers a question. Reply yes or no."},
        {
            "role": "user",
            "content": f"Passage: {text}\n\nQuestion: {query}\n\nDoes the passage answer the question?",
        },
    ]


@functools.lru_cache(maxsize=4)
def make_reranker(name: str = "maxsim") -> Any:
    if name == "maxsim":
        return MaxSimReranker()
    if name == "llm":
        return LLMReranker()
    if Path(name).expanduser().is_dir() or "/" in name:
        return CrossEncoderReranker(
            str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
        )
    raise BadInput(f"unknown reranker {name!r}; use maxsim, a cross-encoder directory, or a hub id")
