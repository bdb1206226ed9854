"""ZooCache.append: the amortised concatenation that attention mixers grow their KV caches with. Checked
against torch.cat through buffer regrowth, after beam reordering and after a mixer replaces a tensor, and
for O(log n) reallocations (what makes a decode step not copy the whole cache)."""

import torch

from seqzoo.architectures.base import ZooCache


def test_append_equals_cat_through_regrowth_along_any_dim():
    g = torch.Generator().manual_seed(0)
    for dim, shape in ((1, (2, 0, 3, 4)), (2, (2, 3, 0, 5)), (-2, (2, 3, 0, 5))):
        cache = ZooCache(2)
        want, views = None, []
        for step in range(150):
            n = 1 if step % 7 else 1 + step % 5  # mostly one token, sometimes a chunk
            size = list(shape)
            size[dim] = n
            x = torch.randn(size, generator=g)
            got = cache.append(1, "k", x, dim=dim)
            want = x if want is None else torch.cat([want, x], dim)
            assert torch.equal(got, want) and cache[1]["k"] is got
            views.append((got, want))
        for old, ref in views:  # views handed out earlier still hold what they held
            assert torch.equal(old, ref)
        assert cache[0] == {}


def test_append_reallocates_only_log_many_times():
    cache = ZooCache(1)
    ptrs = set()
    for _ in range(1000):
        t = cache.append(0, "v", torch.ones(1, 1, 2, 8), dim=1)
        ptrs.add(t.data_ptr())
    assert t.shape == (1, 1000, 2, 8) and bool((t == 1).all())
    assert len(ptrs) <= 6, f"{len(ptrs)} buffers for 1000 appends: append is copying the cache per token"


def test_append_after_reorder_and_after_replacement():
    g = torch.Generator().manual_seed(1)
    cache = ZooCache(1)
    a = torch.randn(3, 4, 2, generator=g)
    cache.append(0, "k", a, dim=1)
    b = torch.randn(3, 1, 2, generator=g)
    cache.append(0, "k", b, dim=1)
    beams = torch.tensor([2, 0, 0])
    cache.reorder_cache(beams)
    c = torch.randn(3, 1, 2, generator=g)
    got = cache.append(0, "k", c, dim=1)
    want = torch.cat([torch.cat([a, b], 1)[beams], c], 1)
    assert torch.equal(got, want)
    cache[0]["k"] = torch.zeros(3, 2, 2)  # a mixer that stores its own tensor
    d = torch.randn(3, 1, 2, generator=g)
    assert torch.equal(cache.append(0, "k", d, dim=1), torch.cat([torch.zeros(3, 2, 2), d], 1))
