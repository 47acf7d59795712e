import pytest
import torch

from pfm import InvalidInputError, couple
from pfm.coupling import transport_cost


@pytest.mark.parametrize("seed", range(5))
def test_ot_cost_not_above_independent(seed):
    g = torch.Generator().manual_seed(seed)
    y0, y1 = torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g) + 1
    ot = couple(y0, y1, method="ot")
    ind = couple(y0, y1, method="independent", generator=g)
    paired = couple(y0, y1, method="paired")
    sk = couple(y0, y1, method="sinkhorn", reg=0.02, generator=g)
    c_ot = transport_cost(y0, y1, *ot)
    assert c_ot <= transport_cost(y0, y1, *ind) + 1e-9
    assert c_ot <= transport_cost(y0, y1, *paired) + 1e-9
    assert transport_cost(y0, y1, *sk) < transport_cost(y0, y1, *ind)  # entropic OT still beats random
    # exact OT is a permutation
    assert torch.equal(ot[1].sort().values, torch.arange(64))


def test_ot_matches_brute_force_on_tiny_batch():
    import itertools

    g = torch.Generator().manual_seed(3)
    y0, y1 = torch.randn(6, 2, generator=g), torch.randn(6, 2, generator=g)
    i0, i1 = couple(y0, y1, method="ot")
    best = min(transport_cost(y0, y1, torch.arange(6), torch.tensor(p)) for p in itertools.permutations(range(6)))
    assert transport_cost(y0, y1, i0, i1) == pytest.approx(best)


@pytest.mark.parametrize("method", ["independent", "ot", "sinkhorn"])
def test_labels_never_cross(method):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (128,), generator=g)
    # outputs of different labels overlap, so a context-blind coupling would cross
    y0, y1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g)
    i0, i1 = couple(y0, y1, labels, method, generator=g)
    assert torch.equal(labels[i0], labels[i1])
    blind = couple(y0, y1, labels, method, within_context=False, generator=g)
    assert (labels[blind[0]] != labels[blind[1]]).float().mean() > 0.3  # the released code's behaviour


def test_vector_contexts():
    g = torch.Generator().manual_seed(0)
    # 8 distinct contexts, 16 rows each: OT should pair within a context
    c = torch.randn(8, 4, generator=g).repeat_interleave(16, 0)
    y0, y1 = torch.randn(128, 2, generator=g), torch.randn(128, 2, generator=g)
    i0, i1 = couple(y0, y1, c, "ot")
    assert torch.equal(c[i0], c[i1])
    i0, i1 = couple(y0, y1, c, "independent", generator=g)
    assert torch.equal(c[i0], c[i1]) and not torch.equal(i1, i0)
    # all-distinct contexts: independent keeps the given pairs
    cd = torch.randn(128, 4, generator=g)
    i0, i1 = couple(y0, y1, cd, "independent", generator=g)
    assert torch.equal(i0, i1)
    # context_weight=0 ignores the context
    i0, i1 = couple(y0, y1, c, "ot", context_weight=0.0)
    assert not torch.equal(c[i0], c[i1])


def test_bad_inputs():
    with pytest.raises(InvalidInputError, match="method"):
        couple(torch.zeros(3, 2), torch.zeros(3, 2), method="greedy")
    with pytest.raises(InvalidInputError, match="same shape"):
        couple(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(InvalidInputError, match="context has 2 rows"):
        couple(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize("method", ["independent", "ot", "sinkhorn"])
def test_sub_blocks_couple_each_block_on_its_own(method):
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, 3, (100,), generator=g)
    y0, y1 = torch.randn(100, 2, generator=g), torch.randn(100, 2, generator=g)
    i0, i1 = couple(y0, y1, labels, method, block=32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(i0, torch.arange(100))
    assert torch.equal(labels[i1], labels)  # still within a label
    gen = torch.Generator().manual_seed(1)  # the same draws, block after block
    for s in range(0, 100, 32):  # blocks of 32, 32, 32 and 4: partners stay in their block
        want = couple(y0[s:s + 32], y1[s:s + 32], labels[s:s + 32], method, generator=gen)[1] + s
        assert torch.equal(i1[s:s + 32], want)
    if method == "ot":  # a block as large as the batch is the whole batch
        assert torch.equal(couple(y0, y1, labels, block=100)[1], couple(y0, y1, labels)[1])


def test_smaller_blocks_cost_more_and_stay_a_permutation():
    g = torch.Generator().manual_seed(5)
    y0, y1 = torch.randn(256, 2, generator=g), torch.randn(256, 2, generator=g)
    costs = []
    for block in (None, 64, 16):
        i0, i1 = couple(y0, y1, block=block)
        assert torch.equal(i1.sort().values, torch.arange(256))
        costs.append(transport_cost(y0, y1, i0, i1))
    assert costs[0] < costs[1] < costs[2] < transport_cost(y0, y1, *couple(y0, y1, method="paired"))


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True])
def test_block_is_checked(bad):
    with pytest.raises(InvalidInputError, match="block"):
        couple(torch.randn(8, 2), torch.randn(8, 2), block=bad)


def test_sub_blocks_do_not_depend_on_the_other_sub_blocks_in_a_call():
    """The pairing threads solve several batches in one call: each sub-block's partners must be those it gets alone."""
    g = torch.Generator().manual_seed(6)
    for d, labels in ((2, None), (784, None), (2, torch.randint(0, 10, (1024,), generator=g))):
        y0, y1 = torch.randn(1024, d, generator=g), torch.randn(1024, d, generator=g)
        together = couple(y0, y1, labels, block=64)[1]
        for s in range(0, 1024, 256):
            part = None if labels is None else labels[s:s + 256]
            assert torch.equal(together[s:s + 256], couple(y0[s:s + 256], y1[s:s + 256], part, block=64)[1] + s)
        if labels is not None:  # within each label, as a sub-block coupled alone
            assert torch.equal(labels[together], labels)
            assert torch.equal(together[:64], couple(y0[:64], y1[:64], labels[:64])[1])
