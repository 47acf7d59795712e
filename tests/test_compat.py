import pytest
import torch
from torch import nn

from pfm import InvalidInputError, OptimalTransportConditionalFlowMatching


class PaperModel(nn.Module):
    """A model in the paper's style: forward(t, y, x) -> v, recording the shape of t it was called with."""

    def __init__(self, dim=2, num_classes=None):
        super().__init__()
        self.emb = nn.Embedding(num_classes, 8) if num_classes else None
        self.net = nn.Sequential(nn.Linear(dim + 1 + (8 if num_classes else 0), 64), nn.SiLU(), nn.Linear(64, dim))
        self.t_shapes = set()

    def forward(self, t, y, x):
        self.t_shapes.add(tuple(t.shape) == (y.shape[0],))
        parts = [y, t[:, None]]
        if self.emb is not None:
            parts.append(self.emb(x))
        return self.net(torch.cat(parts, 1))


class TupleDataset(torch.utils.data.Dataset):
    """The paper's data layout: items (x, y+, y-)."""

    def __init__(self, n=400, conditional=True):
        self.x = torch.randint(0, 2, (n,))
        sign = (1 - 2 * self.x.float())[:, None]
        self.pos = torch.randn(n, 2) + 3 * sign
        self.neg = torch.randn(n, 2)
        self.conditional = conditional

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.conditional:
            return self.x[i], self.pos[i], self.neg[i]
        return self.pos[i], self.neg[i]


def test_paper_api_conditional_learns_rejected_to_preferred():
    model = PaperModel(num_classes=2)
    fm = OptimalTransportConditionalFlowMatching(model)
    out_model, info = fm.fit(TupleDataset(), num_epochs=40, batch_size=64, learning_rate=1e-3, conditional=True,
                             progress=False)
    assert out_model is model and len(info["loss"]) == 40 * 7
    context = torch.tensor([0, 1]).repeat(100)
    improved = fm.compute_target(torch.randn(200, 2), context=context)
    assert improved.shape == (200, 2)
    assert float(improved[context == 0].mean()) > 2.0 and float(improved[context == 1].mean()) < -2.0
    assert model.t_shapes == {True}  # t had shape (B,) in training and at inference (dopri5)


def test_paper_api_unconditional():
    model = PaperModel()
    fm = OptimalTransportConditionalFlowMatching(model)
    ds = TupleDataset(conditional=False)
    ds.pos = torch.randn(400, 2) + 3
    fm.fit(ds, num_epochs=60, conditional=False, progress=False)
    assert float(fm(torch.randn(100, 2)).mean()) > 2.0


def test_paper_api_errors():
    fm = OptimalTransportConditionalFlowMatching(PaperModel())
    with pytest.raises(InvalidInputError, match="fit"):
        fm.compute_target(torch.randn(3, 2))
    with pytest.raises(InvalidInputError, match="\\(x, y\\+, y-\\)"):
        fm.fit(TupleDataset(conditional=False), conditional=True, progress=False)
    with pytest.raises(InvalidInputError, match="empty"):
        fm.fit([], progress=False)
    with pytest.raises(TypeError):
        OptimalTransportConditionalFlowMatching(lambda t, y, x: y)
