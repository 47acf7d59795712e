"""What the image experiment measures of a method's samples, beyond the paper's annotator score.

- ``annotator``: mean softmax probability of the conditioning label under the annotator (the paper's metric);
- ``judge_accuracy``, ``judge_probability``: the same under an independent classifier, which catches patterns that
  fool the annotator alone;
- ``frechet``: Fréchet distance between the judge's penultimate features of the samples and of held-out real images
  of the same label, averaged over labels (FID-style; lower is closer to real images);
- ``diversity``: mean pairwise L2 distance between samples of the same label, divided by the reference's;
- ``out_of_range``: the fraction of pixels outside [0, 1] before clipping (every method's samples are clipped);
- ``frechet_to_reference``: the same Fréchet distance, to the reference's own test samples of the same label: how
  far a method moved pi_ref's outputs. No method here has KL(pi || pi_ref) in closed form (the reference is a
  latent-variable model), so this is the divergence axis against which the strength dial and the beta sweeps
  trade reward (0 for the reference itself).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
import numpy as np
import torch
from scipy import linalg
from torch import Tensor, nn

from pfm.errors import InvalidInputError
from .models import label_probability


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` ``(n, d)`` and ``b`` ``(m, d)``."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
        raise InvalidInputError(f"frechet_distance needs two (n >= 2, d) feature arrays of the same d, got {a.shape} "
                                f"and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # fewer rows than features: singular, and regularized below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(root).all():  # near-singular product: regularize, as the FID reference code does
            eps = 1e-6 * np.eye(a.shape[1])
            root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    # a distance: a slightly negative value is rounding (identical sets), and is 0
    return max(0.0, float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root))))


def mean_pairwise_distance(x: Tensor, labels: Tensor) -> float:
    """Mean L2 distance between two different samples of the same label, averaged over labels."""
    out = []
    for c in torch.unique(labels):
        f = x[labels == c].reshape(int((labels == c).sum()), -1).double()
        n = f.shape[0]
        if n >= 2:
            out.append(float(torch.cdist(f, f).sum() / (n * (n - 1))))
    return float(np.mean(out))


@dataclass
class ImageMetrics:
    annotator: float
    judge_accuracy: float
    judge_probability: float
    frechet: float
    diversity: float
    out_of_range: float
    frechet_to_reference: float


class ImageEvaluator:
    """Scores samples against the annotator, the judge and held-out real images (see the module docstring).

    Args:
        annotator, judge: classifiers (images -> logits); ``judge`` has ``features(images)``.
        real_x, real_y: held-out real images and labels, the Fréchet distance's target.
        reference_x, reference_y: the reference policy's samples, the diversity's unit and the target of
            ``frechet_to_reference``.
    """

    def __init__(self, annotator: nn.Module, judge: nn.Module, real_x: Tensor, real_y: Tensor,
                 reference_x: Tensor, reference_y: Tensor) -> None:
        self.annotator, self.judge = annotator.eval(), judge.eval()
        self.real_features = self._features(real_x)
        self.real_y = real_y
        self.reference_diversity = mean_pairwise_distance(reference_x.clamp(0, 1), reference_y)
        self.reference_features, self.reference_y = self._features(reference_x.clamp(0, 1)), reference_y

    @torch.no_grad()
    def _features(self, x: Tensor) -> np.ndarray:
        return torch.cat([self.judge.features(x[s:s + 2048]) for s in range(0, len(x), 2048)]).numpy()

    @torch.no_grad()
    def __call__(self, x: Tensor, labels: Tensor) -> ImageMetrics:
        if x.shape[0] != labels.shape[0] or x.shape[0] == 0:
            raise InvalidInputError(f"x and labels must have the same, non-zero, number of rows; got {x.shape[0]} "
                                    f"and {labels.shape[0]}")
        if not bool(torch.isfinite(x).all()):
            raise InvalidInputError("the samples hold NaN or infinite values")
        out_of_range = float(((x < 0) | (x > 1)).float().mean())
        x = x.clamp(0, 1)
        feats = self._features(x)  # one pass through the judge: its head maps these features to the logits
        probs = torch.softmax(self.judge.head(torch.from_numpy(feats)), 1)
        fd = [frechet_distance(feats[(labels == c).numpy()], self.real_features[(self.real_y == c).numpy()])
              for c in torch.unique(labels)]
        fd_ref = [frechet_distance(feats[(labels == c).numpy()],
                                   self.reference_features[(self.reference_y == c).numpy()])
                  for c in torch.unique(labels)]
        return ImageMetrics(
            annotator=float(label_probability(self.annotator, x, labels).mean()),
            judge_accuracy=float((probs.argmax(1) == labels).float().mean()),
            judge_probability=float(probs.gather(1, labels.view(-1, 1)).mean()),
            frechet=float(np.mean(fd)),
            diversity=mean_pairwise_distance(x, labels) / self.reference_diversity,
            out_of_range=out_of_range,
            frechet_to_reference=float(np.mean(fd_ref)))

    def as_dict(self, x: Tensor, labels: Tensor) -> dict[str, float]:
        return asdict(self(x, labels))
