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
