import pytest
import torch

from lir_agent import PackedEmbeddings, maxsim_topk

from helpers import naive_maxsim, random_matrices

DIM = 24


@pytest.fixture(scope="module")
def corpus():
    docs = [d.half() for d in random_matrices(400, DIM, seed=1, max_len=60)]
    return docs, PackedEmbeddings.from_list(docs)


@pytest.fixture(scope="module")
def queries():
    return random_matrices(9, DIM, seed=2, max_len=12)


def reference_topk(queries, docs, k, mask=None):
    scores = torch.stack([naive_maxsim(q, docs) for q in queries])
    if mask is not None:
        scores[:, ~mask] = float("-inf")
    return scores.topk(k, dim=1)


@pytest.mark.parametrize("chunk_bytes", [2_000, 100_000, 32 * 2**20])
def test_scores_and_order_match_naive_reference(corpus, queries, chunk_bytes):
    docs, packed = corpus
    scores, ids = maxsim_topk(queries, packed.tokens, packed.offsets, 15, max_chunk_bytes=chunk_bytes)
    ref = reference_topk(queries, docs, 15)
    torch.testing.assert_close(scores.double(), ref.values, atol=1e-4, rtol=1e-5)
    assert torch.equal(ids, ref.indices)


def test_batching_queries_does_not_change_scores(corpus, queries):
    docs, packed = corpus
    alone = maxsim_topk(queries[:1], packed.tokens, packed.offsets, 5)
    batched = maxsim_topk(queries, packed.tokens, packed.offsets, 5)
    torch.testing.assert_close(alone[0][0], batched[0][0])
    assert torch.equal(alone[1][0], batched[1][0])


@pytest.mark.parametrize("fraction", [0.05, 0.6])  # the subset-gather path and the masking path
def test_mask_restricts_results(corpus, queries, fraction):
    docs, packed = corpus
    mask = torch.rand(len(docs), generator=torch.Generator().manual_seed(3)) < fraction
    scores, ids = maxsim_topk(queries, packed.tokens, packed.offsets, 10, doc_mask=mask,
                              max_chunk_bytes=5_000)
    ref = reference_topk(queries, docs, 10, mask)
    assert torch.equal(ids, ref.indices)
    assert bool(mask[ids].all())
    torch.testing.assert_close(scores.double(), ref.values, atol=1e-4, rtol=1e-5)


def test_k_larger_than_eligible_returns_only_eligible(corpus, queries):
    docs, packed = corpus
    mask = torch.zeros(len(docs), dtype=torch.bool)
    mask[[3, 50, 399]] = True
    scores, ids = maxsim_topk(queries, packed.tokens, packed.offsets, 10, doc_mask=mask)
    assert ids.shape == (len(queries), 3)
    assert set(ids[0].tolist()) == {3, 50, 399}
    scores, ids = maxsim_topk(queries, packed.tokens, packed.offsets, 1000)
    assert ids.shape == (len(queries), len(docs))
    assert sorted(ids[0].tolist()) == list(range(len(docs)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(corpus, queries):
    docs, packed = corpus
    cpu = maxsim_topk(queries, packed.tokens, packed.offsets, 10)
    gpu = maxsim_topk(queries, packed.tokens.cuda(), packed.offsets, 10)
    torch.testing.assert_close(gpu[0].cpu(), cpu[0], atol=2e-2, rtol=1e-3)
    assert (gpu[1].cpu() == cpu[1]).float().mean() > 0.9


@pytest.mark.parametrize("masked", [False, True])
def test_documents_longer_than_a_chunk_are_cut_into_pieces_and_scored_whole(masked):
    """Documents of up to 3,000 tokens with 256-token chunks: each is scored in pieces, across
    chunk boundaries, and its score is still MaxSim over all its tokens."""
    docs = random_matrices(40, 16, seed=3, min_len=1, max_len=3000)
    queries = random_matrices(3, 16, seed=4, min_len=4, max_len=12)
    packed = PackedEmbeddings.from_list(docs, 16)
    mask = torch.tensor([i % 3 != 0 for i in range(len(docs))]) if masked else None
    scores, ids = maxsim_topk(queries, packed.tokens, packed.offsets, k=40, doc_mask=mask, max_chunk_bytes=256 * 4 * 28)
    assert max(d.shape[0] for d in docs) > 2000
    for q, query in enumerate(queries):
        expected = naive_maxsim(query, docs)
        eligible = [i for i in range(len(docs)) if mask is None or mask[i]]
        assert sorted(ids[q].tolist()) == eligible
        torch.testing.assert_close(scores[q].double(), expected[ids[q]], atol=1e-4, rtol=1e-5)
