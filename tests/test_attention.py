"""Multi-crop attention: grouped SDPA, packed block-diagonal paths, backend choice, drop path."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fastdino_cli.config import ModelConfig
from fastdino_cli.errors import ConfigError
from fastdino_cli.model import attention as att
from fastdino_cli.model.attention import group_shapes
from fastdino_cli.model.vit import Block, build_vit, cat_groups, residual, split_groups


def tiny_double(**kw):
    cfg = {"arch": "vit_tiny", "embed_dim": 24, "depth": 2, "num_heads": 3, "patch_size": 4}
    cfg.update(img_size=16, num_register_tokens=2, layerscale_init=0.3)
    cfg.update(kw)
    torch.manual_seed(0)
    m = build_vit(ModelConfig(**cfg)).double().eval()
    with torch.no_grad():
        m.mask_token.normal_()
    return m


def crops():
    g = torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loc = torch.randn(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    masks = torch.zeros(4, 16, dtype=torch.bool)
    masks[0, :5] = True
    masks[2, 7:9] = True
    return g, loc, masks


def _assert_outputs_close(a, b, atol):
    for field in ("cls", "registers", "patches", "prenorm"):
        torch.testing.assert_close(getattr(a, field), getattr(b, field), atol=atol, rtol=0)


def test_grouped_equals_per_image_unpacked_fp64():
    m = tiny_double()
    g, loc, masks = crops()
    grouped = m.forward_list([g, loc], [masks, None])
    assert [o.patches.shape for o in grouped] == [(4, 16, 24), (6, 4, 24)]
    for i in range(4):
        single = m.forward_features(g[i : i + 1], masks[i : i + 1])
        for field in ("cls", "patches", "prenorm", "registers"):
            got = getattr(grouped[0], field)[i : i + 1]
            torch.testing.assert_close(got, getattr(single, field), atol=1e-10, rtol=0)
    for i in range(6):
        single = m.forward_features(loc[i : i + 1])
        torch.testing.assert_close(
            grouped[1].prenorm[i : i + 1], single.prenorm, atol=1e-10, rtol=0
        )


def test_packed_dense_mask_equals_grouped_forward_and_backward():
    g, loc, masks = crops()
    outs = {}
    grads = {}
    for backend in ("sdpa", "dense_mask"):
        m = tiny_double(attention=backend if backend == "sdpa" else "auto")
        m.attention = backend
        res = m.forward_list([g, loc], [masks, None])
        (res[0].patches.pow(2).sum() + res[1].cls.sum()).backward()
        outs[backend] = res
        grads[backend] = {n: p.grad.clone() for n, p in m.named_parameters()}
    for a, b in zip(outs["sdpa"], outs["dense_mask"], strict=True):
        _assert_outputs_close(a, b, atol=1e-10)
    for name, ga in grads["sdpa"].items():
        torch.testing.assert_close(ga, grads["dense_mask"][name], atol=1e-10, rtol=0)


def test_block_diagonal_mask_layout():
    mask = att.block_diagonal_mask(((2, 2), (1, 3)))
    expect = torch.zeros(7, 7, dtype=torch.bool)
    expect[0:2, 0:2] = expect[2:4, 2:4] = expect[4:7, 4:7] = True
    assert torch.equal(mask, expect)


def test_xformers_block_diagonal_mask_matches_our_packing():
    fmha = pytest.importorskip("xformers.ops.fmha")
    shapes = ((2, 5), (3, 2))
    bias = fmha.BlockDiagonalMask.from_seqlens(att._seqlens(shapes))
    dense = bias.materialize((11, 11), dtype=torch.float64)
    assert torch.equal(dense == 0, att.block_diagonal_mask(shapes))


def test_backend_resolution_on_cpu():
    assert att.resolve_backend("auto", "cpu") == "sdpa"
    assert att.resolve_backend("sdpa", "cpu") == "sdpa"
    with pytest.raises(
        ConfigError, match="model.attention=xformers: xformers attention needs CUDA"
    ):
        att.resolve_backend("xformers", "cpu")
    with pytest.raises(ConfigError, match="not one of"):
        att.resolve_backend("flash", "cpu")


def test_auto_without_packed_kernel_warns_once(monkeypatch):
    monkeypatch.setattr(att, "_warned", set())
    monkeypatch.setattr(att, "_probe", lambda backend, device: f"{backend} missing")
    att._resolve_cached.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            assert att.resolve_backend("auto", "cuda") == "sdpa"
            assert att.resolve_backend("auto", "cuda") == "sdpa"
        assert len(rec) == 1 and "xformers missing; varlen missing" in str(rec[0].message)
    finally:
        att._resolve_cached.cache_clear()


def test_auto_prefers_working_packed_kernel(monkeypatch):
    monkeypatch.setattr(att, "_probe", lambda b, d: None if b == "varlen" else "no xformers")
    att._resolve_cached.cache_clear()
    try:
        assert att.resolve_backend("auto", "cuda") == "varlen"
        assert att.resolve_backend("auto", "cpu") == "sdpa"
    finally:
        att._resolve_cached.cache_clear()


# ---- stochastic depth --------------------------------------------------------------------


def _branch(x, shapes):
    """A per-sample, per-token branch that is easy to predict: 2x + 1."""
    return 2 * x + 1


def _groups():
    xs = [torch.randn(8, 3, 2), torch.randn(5, 2, 2)]
    return xs, cat_groups(xs), group_shapes(xs)


@pytest.mark.parametrize("efficient", [False, True])
def test_drop_path_identity_at_rate_zero(efficient):
    xs, x, shapes = _groups()
    out = split_groups(residual(x, shapes, _branch, 0.0, efficient), shapes)
    for a, o in zip(xs, out, strict=True):
        torch.testing.assert_close(o, a + _branch(a, None))


def test_efficient_drop_path_runs_branch_on_kept_subset_only():
    torch.manual_seed(0)
    seen = []

    def branch(x, shapes):
        seen.append((tuple(x.shape), shapes))
        return _branch(x, shapes)

    xs, x, shapes = _groups()
    out = split_groups(residual(x, shapes, branch, 0.4, efficient=True), shapes)
    # int(8 * 0.6) = 4 and int(5 * 0.6) = 3 samples: 4*3 + 3*2 = 18 token rows
    assert seen == [((18, 2), ((4, 3), (3, 2)))]
    for a, o, kept in zip(xs, out, (4, 3), strict=True):
        changed = (o != a).flatten(1).any(1)
        assert int(changed.sum()) == kept
        scale = a.shape[0] / kept
        torch.testing.assert_close(o[changed], a[changed] + scale * _branch(a[changed], None))
    seen.clear()
    single = residual(xs[0], group_shapes(xs[:1]), branch, 0.4, efficient=True)
    assert seen == [((4, 3, 2), ((4, 3),))] and single.shape == xs[0].shape


@pytest.mark.parametrize("layout", ["single", "groups"])
@pytest.mark.parametrize("efficient", [False, True])
def test_drop_path_expectation_matches_full_branch(efficient, layout):
    """Mean over many draws -> x + branch(x). Each output element is x + c * b with c in
    {0, s}, E[c] = 1; its variance is b^2 * (s - 1) with s = B/kept (efficient) or 1/(1-p)
    (ordinary). Rate 0.5 with even batches gives s = 2 in both cases, so with K draws the
    standard error is |b| sqrt((s-1)/K); we allow 5 standard errors (a false failure has
    probability ~6e-7 per element; the draws are seeded, so the test is deterministic)."""
    torch.manual_seed(1234)
    rate, k = 0.5, 1000
    xs = (
        [torch.randn(6, 2, 3), torch.randn(4, 1, 3)]
        if layout == "groups"
        else [torch.randn(6, 2, 3)]
    )
    x, shapes = cat_groups(xs), group_shapes(xs)
    target = x + _branch(x, None)
    total = torch.zeros_like(x)
    for _ in range(k):
        total += residual(x, shapes, _branch, rate, efficient)
    mean = total / k
    bound = 5 * _branch(x, None).abs() * math.sqrt((2.0 - 1) / k) + 1e-6
    assert torch.all((mean - target).abs() <= bound)


def test_block_drop_path_identity_in_eval_and_random_in_training():
    torch.manual_seed(0)
    blk = Block(16, 2, ffn_hidden=32, layerscale_init=1.0, drop_path=0.5).double()
    ref = Block(16, 2, ffn_hidden=32, layerscale_init=1.0, drop_path=0.0).double()
    ref.load_state_dict(blk.state_dict())
    x = torch.randn(8, 5, 16, dtype=torch.float64)
    blk.eval()
    torch.testing.assert_close(blk(x), ref(x))
    ref.train()
    torch.testing.assert_close(ref(x), ref.eval()(x))  # rate 0 in training: deterministic
    blk.train()
    assert not torch.allclose(blk(x), ref(x))
