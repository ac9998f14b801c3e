"""The residual codec against a naive per-dimension quantiser written from its definition."""

import numpy as np
import pytest
import torch

from lir_agent import codec as codec_module
from lir_agent.codec import ResidualCodec

from helpers import random_matrices


def clustered_tokens(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(40, dim, generator=g), dim=1)
    picks = centres[torch.randint(0, 40, (n,), generator=g)]
    return torch.nn.functional.normalize(picks + 0.3 * torch.randn(n, dim, generator=g) / dim**0.5, dim=1)


def naive_decode(codec: ResidualCodec, vectors: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """The given centroid plus, per dimension, the value of the bucket the residual falls in."""
    x = vectors.double()
    centroids = codec.centroids.double()
    residual = x - centroids[codes]
    out = torch.empty_like(x)
    for d in range(x.shape[1]):
        bucket = np.searchsorted(codec.cutoffs[d].double().numpy(), residual[:, d].numpy(), side="left")
        out[:, d] = codec.weights[d].double()[torch.from_numpy(bucket)]
    out += centroids[codes]
    return out / out.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("nbits", [1, 2, 4])
@pytest.mark.parametrize("bfloat16", [False, True])
def test_decode_and_score_match_the_naive_quantiser(nbits, bfloat16, monkeypatch):
    monkeypatch.setattr(codec_module, "NATIVE_CPU_BF16", bfloat16)  # the bfloat16 path runs (slowly) on any CPU
    dim = 32
    tokens = clustered_tokens(3000, dim, seed=nbits)
    codec = ResidualCodec.fit(tokens, nbits=nbits, num_centroids=16)
    test = clustered_tokens(200, dim, seed=100 + nbits)
    arrays, _ = codec.encode(test)
    assert set(arrays) == set(codec.schema())
    assert sum(a[0].nbytes for a in arrays.values()) == codec.bytes_per_token == dim * nbits // 8 + 4
    codes = torch.from_numpy(arrays["codes"].astype(np.int64))
    similarities = test @ codec.centroids.T  # assignment uses bfloat16 products: nearest up to their precision
    assert (similarities.max(dim=1).values - similarities[torch.arange(len(test)), codes]).max() < 1e-2
    reference = naive_decode(codec, test, codes)
    decoded = codec.decode(arrays["codes"], arrays["residuals"])
    torch.testing.assert_close(decoded.double(), reference, atol=1e-5, rtol=0)
    # 11 query tokens and 200 document tokens: neither a multiple of the bfloat16 paddings
    query = torch.nn.functional.normalize(torch.randn(11, dim, generator=torch.Generator().manual_seed(7)), dim=1)
    scores = codec.score(query, query @ codec.centroids.T, codes,
                         torch.from_numpy(arrays["residuals"]), torch.from_numpy(arrays["scales"]))
    # the stored scale is float16: relative error below 2**-11; bfloat16 residual products add
    # up to 2**-8 of |q·r| (inputs) and of the product (output)
    torch.testing.assert_close(scores.double(), query.double() @ reference.T, atol=4e-3 if bfloat16 else 2e-3, rtol=0)
    # the residual adds to what the centroid alone recovers
    assert (decoded * test).sum(dim=1).mean() > (codec.centroids[codes] * test).sum(dim=1).mean() + 0.05


def test_float16_mode_is_lossless_up_to_float16():
    tokens = torch.cat(random_matrices(50, 24, seed=3))
    codec = ResidualCodec.fit(tokens, nbits=16, num_centroids=8)
    arrays, _ = codec.encode(tokens)
    assert "scales" not in arrays
    torch.testing.assert_close(codec.decode(arrays["codes"], arrays["residuals"]), tokens, atol=1e-3, rtol=0)


def test_save_and_load_round_trip(tmp_path):
    tokens = clustered_tokens(2000, 48, seed=5)
    codec = ResidualCodec.fit(tokens, nbits=2, num_centroids=16, projection_dim=16)
    codec.save(tmp_path / "codec")
    loaded = ResidualCodec.load(tmp_path / "codec")
    first, _ = codec.encode(tokens[:100])
    second, _ = loaded.encode(tokens[:100])
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    assert not list((tmp_path / "codec").glob("*.pkl"))


def test_bad_settings_are_refused():
    tokens = clustered_tokens(500, 16, seed=1)
    with pytest.raises(ValueError, match="nbits"):
        ResidualCodec.fit(tokens, nbits=3)
    with pytest.raises(ValueError, match="projection_dim"):
        ResidualCodec.fit(tokens, nbits=2, projection_dim=17)
