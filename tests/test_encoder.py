"""Encoders: the three checkpoint formats load faithfully and encode like a reference computation."""

import json
import shutil
import string

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

from lir_agent import Encoder, PackedEmbeddings
from lir_agent.encoder import detect_format, resolve_model_path

from helpers import MODELS, needs

PYLATE_PARTIAL = MODELS / "answerai-colbert-small-v1-partial"
TEXTS = ["What is the capital of France?", "Cells divide; DNA replicates, (mostly) faithfully!",
         "a", "Transformers encode tokens into contextual vectors, one per token, for late interaction."]


def reference_colbert(backbone, tokenizer, projection, text, marker, length, expand, skip_ids):
    """Straightforward ColBERT encoding of one text, Stanford style: tokenize ". text", then put the
    marker where the "." was; queries are padded with [MASK] that the encoder does not attend to."""
    enc = tokenizer(". " + text, truncation=True, max_length=length,
                    padding="max_length" if expand else False, return_tensors="pt")
    ids, attention = enc["input_ids"].clone(), enc["attention_mask"]
    ids[0, 1] = tokenizer.convert_tokens_to_ids(marker)
    if expand:
        ids[ids == tokenizer.pad_token_id] = tokenizer.mask_token_id
    with torch.no_grad():
        states = backbone(input_ids=ids, attention_mask=attention, token_type_ids=torch.zeros_like(ids)).last_hidden_state[0]
        vectors = torch.nn.functional.normalize(states @ projection.T, dim=-1)
    if expand:
        return vectors
    keep = attention[0].bool() & ~torch.isin(ids[0], torch.tensor(sorted(skip_ids)))
    return vectors[keep]


@pytest.fixture(scope="module")
def pylate_checkpoint(tmp_path_factory):
    """The real partial PyLate checkpoint with a random backbone of its own config."""
    directory = tmp_path_factory.mktemp("pylate")
    shutil.copytree(PYLATE_PARTIAL, directory, dirs_exist_ok=True)
    torch.manual_seed(0)
    backbone = BertModel(BertConfig.from_pretrained(PYLATE_PARTIAL), add_pooling_layer=False).eval()
    backbone.save_pretrained(directory)
    return directory, backbone


@needs(PYLATE_PARTIAL)
def test_pylate_checkpoint_settings(pylate_checkpoint):
    directory, _ = pylate_checkpoint
    assert detect_format(directory) == "pylate"
    encoder = Encoder.from_pretrained(str(directory), device="cpu")
    s = encoder.settings
    assert (s.format, s.dim, s.query_length, s.document_length) == ("pylate", 96, 32, 300)
    assert (s.query_prefix, s.document_prefix) == ("[unused0]", "[unused1]")
    assert s.query_expansion and not s.attend_to_expansion_tokens
    assert set(s.skiplist) == set(string.punctuation)
    queries = encoder.encode_queries(TEXTS)
    assert all(q.shape == (32, 96) and q.dtype == torch.float16 for q in queries)
    torch.testing.assert_close(queries[0].float().norm(dim=1), torch.ones(32), atol=2e-3, rtol=0)


@needs(PYLATE_PARTIAL)
def test_pylate_encodings_match_reference(pylate_checkpoint):
    directory, backbone = pylate_checkpoint
    encoder = Encoder.from_pretrained(str(directory), device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(directory)
    projection = load_file(PYLATE_PARTIAL / "1_Dense" / "model.safetensors")["linear.weight"]
    skip = {tokenizer.convert_tokens_to_ids(p) for p in string.punctuation}
    queries = encoder.encode_queries(TEXTS, batch_size=3)
    documents = encoder.encode_documents(TEXTS, batch_size=3)
    for text, query, document in zip(TEXTS, queries, documents):
        ref_q = reference_colbert(backbone, tokenizer, projection, text, "[unused0]", 32, True, skip)
        ref_d = reference_colbert(backbone, tokenizer, projection, text, "[unused1]", 300, False, skip)
        torch.testing.assert_close(query.float(), ref_q, atol=2e-3, rtol=1e-2)
        assert document.shape == ref_d.shape
        torch.testing.assert_close(document.float(), ref_d, atol=2e-3, rtol=1e-2)
    # punctuation is dropped from documents; the marker is added
    ids = tokenizer(TEXTS[1])["input_ids"]
    assert documents[1].shape[0] == len(ids) + 1 - sum(i in skip for i in ids)
    assert sum(i in skip for i in ids) >= 5


@pytest.fixture(scope="module")
def stanford_checkpoint(tmp_path_factory):
    """A tiny Stanford ColBERT checkpoint: bert.* weights + linear (dim 128) + artifact.metadata."""
    directory = tmp_path_factory.mktemp("stanford")
    words = ["the", "capital", "of", "france", "what", "is", "cells", "divide", "dna", "a", "token", "##s"]
    vocab = ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *words]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(1)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    config.architectures = ["HF_ColBERT"]
    config.save_pretrained(directory)
    backbone = BertModel(config, add_pooling_layer=False).eval()
    linear = torch.randn(128, 32) / 6
    state = {f"bert.{k}": v.contiguous() for k, v in backbone.state_dict().items()}
    state["linear.weight"] = linear
    save_file(state, directory / "model.safetensors")
    (directory / "artifact.metadata").write_text(json.dumps({
        "query_token_id": "[unused0]", "doc_token_id": "[unused1]", "query_maxlen": 12, "doc_maxlen": 20,
        "dim": 128, "mask_punctuation": True, "attend_to_mask_tokens": False}))
    return directory, backbone, tokenizer, linear


def test_stanford_checkpoint_loads_and_matches_reference(stanford_checkpoint):
    directory, backbone, tokenizer, linear = stanford_checkpoint
    encoder = Encoder.from_pretrained(str(directory), device="cpu")
    s = encoder.settings
    assert (s.format, s.dim, s.query_length, s.document_length) == ("stanford", 128, 12, 20)
    assert (s.query_prefix, s.document_prefix, s.query_expansion) == ("[unused0]", "[unused1]", True)
    skip = {tokenizer.convert_tokens_to_ids(p) for p in string.punctuation}
    texts = TEXTS + ["the capital of france is the capital of france is the capital of france, a dna token"]
    queries = encoder.encode_queries(texts, batch_size=2)
    documents = encoder.encode_documents(texts, batch_size=2)
    for text, query, document in zip(texts, queries, documents):
        torch.testing.assert_close(query.float(), reference_colbert(backbone, tokenizer, linear, text, "[unused0]", 12, True, skip),
                                   atol=2e-3, rtol=1e-2)
        torch.testing.assert_close(document.float(), reference_colbert(backbone, tokenizer, linear, text, "[unused1]", 20, False, skip),
                                   atol=2e-3, rtol=1e-2)
    assert documents[-1].shape[0] <= 20  # truncated to doc_maxlen, marker included


def test_default_encoder_matches_plain_transformers(encoder):
    from transformers import AutoModel

    directory = resolve_model_path("default")
    model = AutoModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    s = encoder.settings
    assert (s.format, s.dim, s.query_length, s.document_length, s.query_expansion) == ("transformers", 384, 64, 256, False)
    long_text = " ".join(["retrieval"] * 400)
    texts = TEXTS + [long_text]
    documents = encoder.encode_documents(texts, batch_size=2)
    queries = encoder.encode_queries(texts, batch_size=2)
    for text, document, query in zip(texts, documents, queries):
        for matrix, length in ((document, 256), (query, 64)):
            enc = tokenizer(text, truncation=True, max_length=length, return_tensors="pt")
            with torch.no_grad():
                ref = torch.nn.functional.normalize(model(**enc).last_hidden_state[0], dim=-1)
            torch.testing.assert_close(matrix.float(), ref, atol=2e-3, rtol=1e-2)
    assert documents[-1].shape[0] == 256 and queries[-1].shape[0] == 64


def test_packed_output_and_errors(encoder):
    packed = encoder.encode_documents(TEXTS, packed=True)
    assert isinstance(packed, PackedEmbeddings) and len(packed) == len(TEXTS)
    separate = encoder.encode_documents(TEXTS)
    for i, matrix in enumerate(separate):
        assert torch.equal(packed[i], matrix)
    with pytest.raises(ValueError, match="list of texts"):
        encoder.encode_queries("a single string")
    with pytest.raises(ValueError, match="batch_size"):
        encoder.encode_documents(TEXTS, batch_size=0)


@needs(PYLATE_PARTIAL)
def test_token_spans_stand_for_the_rows_of_the_matrices(pylate_checkpoint, encoder):
    """One span per row, in row order: the marker, special tokens and expansion [MASK]s have
    none, skiplisted punctuation has no row, every other row's span is its token's text."""
    directory, _ = pylate_checkpoint
    pylate = Encoder.from_pretrained(str(directory), device="cpu")
    for model in (pylate, encoder):
        for is_query in (False, True):
            spans = model.token_spans(TEXTS, is_query=is_query)
            matrices = (model.encode_queries if is_query else model.encode_documents)(TEXTS)
            for text, (tokens, where), matrix in zip(TEXTS, spans, matrices):
                assert len(tokens) == where.shape[0] == matrix.shape[0]
                for token, (start, end) in zip(tokens, where.tolist()):
                    if start < 0:
                        assert token in ("[CLS]", "[SEP]", "[MASK]", "[unused0]", "[unused1]")
                    else:
                        assert text[start:end].lower() == token.removeprefix("##").lower()
                if model is pylate and not is_query:
                    assert not any(t in string.punctuation for t in tokens)
                    assert tokens[1] == "[unused1]"
                if model is pylate and is_query:
                    assert tokens[1] == "[unused0]" and tokens[-1] == "[MASK]" and len(tokens) == 32
