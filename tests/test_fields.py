import pytest
import torch
from torch import nn

from pfm import InvalidInputError, MLPField, UNetField


@pytest.mark.parametrize("shape", [(2,), (3, 4), (1, 5, 5)])
@pytest.mark.parametrize("ctx", [None, "label", "vector"])
def test_mlp_any_shape(shape, ctx):
    kw = {"label": dict(num_classes=3), "vector": dict(context_shape=(2, 2)), None: {}}[ctx]
    f = MLPField(shape, hidden=16, depth=2, **kw)
    c = {"label": torch.tensor([0, 2, 1, 1]), "vector": torch.randn(4, 2, 2), None: None}[ctx]
    y = torch.randn(4, *shape)
    out = f(torch.rand(4), y, c)
    assert out.shape == y.shape
    assert torch.count_nonzero(out) == 0  # zero-initialized output: an untrained flow is the identity
    out.sum().backward()


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 9, 13)])
@pytest.mark.parametrize("ctx", [None, "label", "vector"])
def test_unet_shapes(shape, ctx):
    kw = {"label": dict(num_classes=10), "vector": dict(context_shape=(4,)), None: {}}[ctx]
    f = UNetField(shape, channels=(8, 16), emb_dim=16, **kw)
    nn.init.normal_(f.out.weight)  # make the output depend on the input
    c = {"label": torch.tensor([3, 7]), "vector": torch.randn(2, 4), None: None}[ctx]
    y = torch.randn(2, *shape)
    out = f(torch.rand(2), y, c)
    assert out.shape == y.shape
    if ctx == "label":  # the context matters
        assert not torch.allclose(out, f(torch.rand(2), y, torch.tensor([0, 0])))


def test_context_errors():
    f = MLPField((2,), num_classes=3, hidden=8)
    with pytest.raises(InvalidInputError, match="required"):
        f(torch.rand(4), torch.randn(4, 2), None)
    with pytest.raises(InvalidInputError, match="labels"):
        f(torch.rand(4), torch.randn(4, 2), torch.randn(4))
    g = MLPField((2,), context_shape=(3,), hidden=8)
    with pytest.raises(InvalidInputError, match="\\(4, 3\\)"):
        g(torch.rand(4), torch.randn(4, 2), torch.randn(4, 5))
    with pytest.raises(InvalidInputError, match="not both"):
        MLPField((2,), num_classes=3, context_shape=(3,))
    with pytest.raises(InvalidInputError, match="\\(C, H, W\\)"):
        UNetField((4,))


def test_scalar_time_is_broadcast():
    f = MLPField((2,), hidden=8)
    y = torch.randn(3, 2)
    torch.testing.assert_close(f(torch.tensor(0.3), y), f(torch.full((3,), 0.3), y))
