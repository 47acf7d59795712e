"""The image experiment's networks: the reference generator (a conditional VAE whose decoder is the policy), the
annotator (LeNet-5) and an independent judge (a different CNN, never used for preferences).

The reference policy is the paper's: a generator that outputs a Gaussian per pixel given noise ``z`` and the label.
As a :class:`pfm.policies.Policy` its output is the pair ``(z, image)``, flattened to ``(z_dim + pixels,)``, with
``log pi(z, x | label) = log N(z; 0, I) + log N(x; mu(z, label), diag(sigma^2))``: an exact log-likelihood, so DPO
and RLHF fine-tune the decoder through it (the prior term does not depend on the weights and cancels in every
log-ratio). PFM only sees the image part (:meth:`LatentImagePolicy.images`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pfm import validate as V
from pfm.data import as_context
from pfm.errors import InvalidInputError
from pfm.policies import Policy, diagonal_gaussian_log_prob
from pfm.train import History, optimize


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class ConditionalVAE(nn.Module):
    """A conditional VAE with a Gaussian decoder: ``mu(z, label)`` in (0, 1) and a learned std per pixel.

    Args:
        image_shape: shape of one image, e.g. ``(1, 28, 28)``.
        num_classes: number of labels.
        z_dim, hidden: latent size and MLP width.
        min_std: floor on the decoder's std (background pixels are exactly 0 in MNIST; without a floor their
            std and the log-likelihood would diverge).
    """

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, z_dim: int = 16,
                 hidden: int = 512, min_std: float = 0.02) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        self.num_classes, self.z_dim, self.min_std = int(num_classes), int(z_dim), float(min_std)
        d = math.prod(self.image_shape)
        self.encoder = _mlp([d + num_classes, hidden, hidden, 2 * z_dim])
        self.decoder = _mlp([z_dim + num_classes, hidden, hidden, d])
        self.log_std = nn.Parameter(torch.full((d,), math.log(0.1)))
        self.config = {"image_shape": list(self.image_shape), "num_classes": self.num_classes, "z_dim": self.z_dim,
                       "hidden": int(hidden), "min_std": self.min_std}

    def _onehot(self, labels: Tensor) -> Tensor:
        return F.one_hot(labels.long(), self.num_classes).to(self.log_std.dtype)

    def decode(self, z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``(n, pixels)`` and std ``(pixels,)`` of the images given latents ``(n, z_dim)`` and labels."""
        mu = torch.sigmoid(self.decoder(torch.cat([z, self._onehot(labels)], 1)))
        return mu, self.log_std.exp().clamp_min(self.min_std)

    def _posterior(self, x: Tensor, labels: Tensor, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        """A latent drawn from q(z | x, label) ``(n, z_dim)`` and KL(q || N(0, I)) ``(n,)``."""
        h = self.encoder(torch.cat([x.reshape(x.shape[0], -1), self._onehot(labels)], 1))
        m, log_s = h[:, :self.z_dim], h[:, self.z_dim:].clamp(-10, 5)
        eps = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
        kl = 0.5 * (m.pow(2) + (2 * log_s).exp() - 2 * log_s - 1).sum(1)
        return m + log_s.exp() * eps, kl

    def elbo(self, x: Tensor, labels: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """The evidence lower bound of each image ``(n, *image_shape)`` under the Gaussian decoder: ``(n,)`` nats."""
        flat = x.reshape(x.shape[0], -1)
        z, kl = self._posterior(x, labels, generator)
        mu, std = self.decode(z, labels)
        return diagonal_gaussian_log_prob(flat, mu, std) - kl

    def fit(self, x: Tensor, labels: Tensor, *, epochs: float = 60, std_epochs: float = 5, batch_size: int = 128,
            lr: float = 1e-3, seed: int = 0, progress: bool = True) -> History:
        """Train on images ``x`` ``(N, *image_shape)`` with labels ``(N,)`` in two stages.

        First the encoder and the decoder's mean, by the ELBO with a Bernoulli likelihood of the pixel intensities
        (cross-entropy): its gradients are bounded, so the KL term keeps the latent from carrying the label, and the
        decoder follows the label (trained with the Gaussian likelihood and a learned std, the reconstruction term
        outweighed the KL and the decoder ignored the label: its samples scored 0.30 under the annotator). Then the
        per-pixel std alone, by the Gaussian likelihood with the mean frozen: the policy's density.
        """
        x, labels = _check_images(x, labels, self.image_shape, self.num_classes)
        d = x[0].numel()

        def bernoulli(index: Tensor, gen: torch.Generator) -> Tensor:
            xb, cb = x[index], labels[index]
            z, kl = self._posterior(xb, cb, gen)
            logits = self.decoder(torch.cat([z, self._onehot(cb)], 1))
            rec = F.binary_cross_entropy_with_logits(logits, xb.reshape(len(xb), -1), reduction="none").sum(1)
            return (rec + kl).mean() / d

        def gaussian(index: Tensor, gen: torch.Generator) -> Tensor:
            return -self.elbo(x[index], labels[index], gen).mean() / d

        steps = max(1, math.ceil(epochs * len(x) / batch_size))
        self.log_std.requires_grad_(False)
        history = optimize(self, bernoulli, len(x), steps=steps, batch_size=batch_size, lr=lr, grad_clip=1.0,
                           seed=seed, progress=progress, desc="reference generator (CVAE)")
        frozen = [p for p in self.parameters() if p is not self.log_std]
        for p in frozen:
            p.requires_grad_(False)
        self.log_std.requires_grad_(True)
        optimize(self, gaussian, len(x), steps=max(1, math.ceil(std_epochs * len(x) / batch_size)),
                 batch_size=batch_size, lr=1e-2, grad_clip=None, seed=seed + 1, progress=progress,
                 desc="reference generator (std)")
        for p in frozen:
            p.requires_grad_(True)
        return history


class LatentImagePolicy(Policy):
    """The decoder of a :class:`ConditionalVAE` as a policy over ``(z, image)`` (see the module docstring).

    ``sample(labels, n)`` returns ``(n, z_dim + pixels)``; :meth:`images` takes the image part.
    """

    def __init__(self, vae: ConditionalVAE) -> None:
        super().__init__()
        self.vae = vae
        self.z_dim = vae.z_dim
        self.image_shape = vae.image_shape
        self.output_shape = (vae.z_dim + math.prod(vae.image_shape),)

    def images(self, y: Tensor) -> Tensor:
        """The images ``(n, *image_shape)`` of outputs ``y`` ``(n, z_dim + pixels)``."""
        return y[:, self.z_dim:].reshape(y.shape[0], *self.image_shape)

    def _labels(self, context: Optional[Tensor]) -> Tensor:
        if context is None or context.is_floating_point() or context.dim() != 1:
            raise InvalidInputError("this policy is conditioned on class labels: context must be an integer (N,) "
                                    "tensor")
        if int(context.max()) >= self.vae.num_classes:
            raise InvalidInputError(f"context holds label {int(context.max())}, but the generator has "
                                    f"{self.vae.num_classes} classes")
        return context

    def sample(self, context: Optional[Tensor], n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        with torch.no_grad():
            return self.rsample(context, n, generator)

    def rsample(self, context: Optional[Tensor], n: int, generator: Optional[torch.Generator] = None) -> Tensor:
        """Like :meth:`sample`, reparameterized: the image part is differentiable in the decoder's weights."""
        c, n = self._rows(context, n)
        labels = self._labels(c)
        dev = self._param_device()
        z = torch.randn(n, self.z_dim, generator=generator, device=dev)
        mu, std = self.vae.decode(z, labels)
        x = mu + std * torch.randn(mu.shape, generator=generator, device=dev)
        return torch.cat([z, x], 1)

    def log_prob(self, y: Tensor, context: Optional[Tensor] = None) -> Tensor:
        c = as_context(context, "context")
        y = self._check_y(y, c)
        labels = self._labels(None if c is None else c.to(y.device))
        z, x = y[:, :self.z_dim], y[:, self.z_dim:]
        mu, std = self.vae.decode(z, labels)
        return diagonal_gaussian_log_prob(z, torch.zeros_like(z), torch.ones_like(z)) + \
            diagonal_gaussian_log_prob(x, mu, std)


class LeNet5(nn.Module):
    """LeNet-5 (ReLU, max-pooling) for 28x28 images: the annotator, as in the paper."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


class JudgeCNN(nn.Module):
    """The independent judge: 3x3 convolutions with batch norm, a 32-d penultimate layer (the features of the
    Fréchet distance), trained on shifted, noisy images; a different architecture and training from the
    annotator's."""

    FEATURES = 32

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, self.FEATURES), nn.ReLU())
        self.head = nn.Linear(self.FEATURES, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class RewardEncoder(nn.Module):
    """Convolutional features for RLHF's reward model (:class:`pfm.baselines.RewardModel`'s ``encoder``): flat
    images ``(n, pixels)`` or ``(n, *image_shape)`` to ``(n, features)``. Its own small CNN, not the annotator's
    or the judge's architecture, so the reward model learns the preference only from the pairs."""

    def __init__(self, image_shape: Sequence[int] = (1, 28, 28), features: int = 128) -> None:
        super().__init__()
        self.image_shape = tuple(int(s) for s in image_shape)
        c, h, w = self.image_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, 16, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * (h // 4) * (w // 4), features), nn.SiLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.reshape(x.shape[0], *self.image_shape))


def _check_images(x: Tensor, labels: Tensor, image_shape: Sequence[int], num_classes: int) -> tuple[Tensor, Tensor]:
    x = V.as_float(x, "x")
    V.check_min_dim(x, "x", 2, "(N, *image_shape)")
    V.check_trailing_shape(x, "x", tuple(image_shape), "images")
    V.check_nonempty(x, "x")
    V.check_finite(x, "x")
    labels = V.as_tensor(labels, "labels")
    if labels.is_floating_point() or labels.dim() != 1 or labels.shape[0] != x.shape[0]:
        raise InvalidInputError(f"labels must be integer class labels ({x.shape[0]},), got {labels.dtype} "
                                f"{tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise InvalidInputError(f"labels must lie in 0..{num_classes - 1}")
    return x, labels.long()


def _shift(x: Tensor, gen: torch.Generator, max_shift: int = 2) -> Tensor:
    """Each image moved by up to ``max_shift`` pixels in each direction (zeros come in)."""
    n, pad = x.shape[0], max_shift
    padded = F.pad(x, (pad, pad, pad, pad))
    dx, dy = (torch.randint(0, 2 * pad + 1, (2, n), generator=gen, device=x.device)).tolist()
    h, w = x.shape[-2:]
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])


def fit_classifier(model: nn.Module, x: Tensor, labels: Tensor, *, epochs: float = 15, batch_size: int = 128,
                   lr: float = 1e-3, augment: bool = False, seed: int = 0, progress: bool = True,
                   desc: str = "classifier") -> History:
    """Train ``model`` (images -> logits) by cross-entropy. ``augment`` shifts the images by up to 2 pixels and adds
    pixel noise of a random std up to 0.3 (a judge should not be fooled by noise or misplacement)."""
    x, labels = _check_images(x, labels, x.shape[1:], int(labels.max()) + 1 if len(labels) else 1)
    steps = max(1, math.ceil(epochs * len(x) / batch_size))

    def loss_fn(index: Tensor, gen: torch.Generator) -> Tensor:
        xb = x[index]
        if augment:
            xb = _shift(xb, gen)
            std = 0.3 * torch.rand(len(xb), 1, 1, 1, generator=gen, device=xb.device)
            xb = (xb + std * torch.randn(xb.shape, generator=gen, device=xb.device)).clamp(0, 1)
        return F.cross_entropy(model(xb), labels[index])

    history = optimize(model, loss_fn, len(x), steps=steps, batch_size=batch_size, lr=lr, grad_clip=1.0, seed=seed,
                       progress=progress, desc=desc)
    return history


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 2048) -> Tensor:
    """Softmax probabilities ``(N, classes)`` of ``model`` on images ``x``, in eval mode."""
    model.eval()
    return torch.cat([F.softmax(model(x[s:s + batch_size]), 1) for s in range(0, len(x), batch_size)])


@torch.no_grad()
def label_probability(model: nn.Module, x: Tensor, labels: Tensor) -> Tensor:
    """``P(label | x)`` under ``model``, ``(N,)``: the annotator's score."""
    return predict(model, x).gather(1, labels.long().view(-1, 1)).squeeze(1)
