"""Property-based tests (hypothesis): data set validation never lets bad data through and never crashes with an
unexplained error; couplings are permutations, never pair across labels, and exact OT never costs more than the
pairs as given."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pfm import PFMError, PreferenceDataset, couple

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4)
floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.floats(-1e3, 1e3, width=32))
dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.bool_, np.complex64])


@st.composite
def arrays(draw, shape=None):
    dtype = draw(dtypes)
    shape = draw(shapes) if shape is None else shape
    if dtype in (np.float32, np.float64):
        return draw(hnp.arrays(dtype, shape, elements=floats))
    return draw(hnp.arrays(dtype, shape))


@SETTINGS
@given(st.data())
def test_dataset_accepts_exactly_the_valid_inputs(data):
    chosen = data.draw(arrays())
    same = data.draw(st.booleans())
    rejected = data.draw(arrays(shape=chosen.shape if same else None))
    valid = (chosen.shape == rejected.shape and chosen.ndim >= 1 and chosen.shape[0] > 0 and chosen.size > 0
             and all(a.dtype.kind in "fiu" for a in (chosen, rejected))
             and all(np.isfinite(a.astype(np.float64)).all() for a in (chosen, rejected)))
    try:
        ds = PreferenceDataset(chosen, rejected)
    except PFMError as exc:
        assert not valid, f"valid data refused: {exc}"
        assert str(exc)  # a message, naming what is wrong
        return
    assert valid, "invalid data accepted"
    assert len(ds) == chosen.shape[0] and ds.output_shape == (chosen.shape[1:] or (1,))  # (N,) holds scalars
    assert torch.isfinite(ds.chosen).all() and ds.chosen.is_floating_point()


@SETTINGS
@given(st.data())
def test_dataset_contexts(data):
    n = data.draw(st.integers(1, 6))
    y = np.zeros((n, 2), np.float32)
    kind = data.draw(st.sampled_from(["labels", "floats", "wrong_rows", "negative", "nan"]))
    if kind == "labels":
        ctx = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 5)))
    elif kind == "floats":
        ctx = data.draw(hnp.arrays(np.float32, (n, 3), elements=st.floats(-10, 10, width=32)))
    elif kind == "wrong_rows":
        ctx = np.zeros(n + data.draw(st.integers(1, 3)), np.int64)
    elif kind == "negative":
        ctx = -np.ones(n, np.int64)
    else:
        ctx = np.full((n, 1), np.nan, np.float32)
    if kind in ("labels", "floats"):
        ds = PreferenceDataset(y, y, ctx)
        assert ds.context_kind == ("label" if kind == "labels" else "vector")
    else:
        with pytest.raises(PFMError):
            PreferenceDataset(y, y, ctx)


@st.composite
def batches(draw):
    n = draw(st.integers(1, 24))
    d = draw(st.integers(1, 4))
    y0 = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-5, 5)))
    y1 = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-5, 5)))
    labels = draw(st.one_of(st.none(), hnp.arrays(np.int64, (n,), elements=st.integers(0, 3))))
    return torch.as_tensor(y0), torch.as_tensor(y1), None if labels is None else torch.as_tensor(labels)


@SETTINGS
@given(batches(), st.sampled_from(["ot", "independent", "sinkhorn", "paired"]), st.integers(0, 2 ** 31 - 1))
def test_couplings_are_permutations_within_a_label(batch, method, seed):
    y0, y1, labels = batch
    n = y0.shape[0]
    i0, i1 = couple(y0, y1, labels, method, generator=torch.Generator().manual_seed(seed))
    assert i0.shape == i1.shape == (n,)
    assert torch.equal(torch.sort(i0).values, torch.arange(n))  # every rejected output used once
    if method != "sinkhorn":  # sinkhorn draws partners from the plan, with replacement
        assert torch.equal(torch.sort(i1).values, torch.arange(n))
    if labels is not None:
        assert torch.equal(labels[i0], labels[i1])  # never across labels


@SETTINGS
@given(batches())
def test_exact_ot_never_costs_more_than_the_given_or_a_random_pairing(batch):
    y0, y1, labels = batch
    i0, i1 = couple(y0, y1, labels, "ot")
    cost = (y0[i0] - y1[i1]).pow(2).sum()
    assert cost <= (y0 - y1).pow(2).sum() + 1e-9
    j0, j1 = couple(y0, y1, labels, "independent", generator=torch.Generator().manual_seed(0))
    assert cost <= (y0[j0] - y1[j1]).pow(2).sum() + 1e-9
