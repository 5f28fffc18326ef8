"""Linear probe: how much a frozen backbone's features know about a data set, before any training.

Penultimate features (after global pooling, before the classifier) of a frozen network in eval mode,
standardised with the training features' mean and std, and a multinomial logistic regression fitted
on them with L-BFGS: loss = mean cross-entropy + ||W||² / (2·C·n), the objective of scikit-learn's
``LogisticRegression(C=1)``, so the regularisation is fixed in advance, not tuned. The probe of
ImageNet features against the same network at random init is the evidence that the weights are
pretrained.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset


@torch.no_grad()
def features(model: nn.Module, dataset: Dataset, batch_size: int = 50,
             device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N × D penultimate features, N labels) of ``dataset`` through timm ``model`` in eval mode."""
    device = device or torch.device("cpu")
    model.eval().to(device)
    feats, labels = [], []
    for x, y in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        feats.append(model.forward_head(model.forward_features(x.to(device)), pre_logits=True).float().cpu())
        labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


@dataclass
class ProbeResult:
    train_top1: float
    test_top1: float
    iterations: int


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
              C: float = 1.0, max_iter: int = 500) -> ProbeResult:
    """Multinomial logistic regression on standardised features (module docstring); top-1 in %."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xs, xt = ((train_x - mean) / std).double(), ((test_x - mean) / std).double()
    classes = int(max(train_y.max(), test_y.max())) + 1
    weight = torch.zeros(xs.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, history_size=20, line_search_fn="strong_wolfe")
    n = len(train_y)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(xs @ weight + bias, train_y) + weight.pow(2).sum() / (2 * C * n)
        loss.backward()
        return loss
    optimizer.step(closure)
    with torch.no_grad():
        train = (xs @ weight + bias).argmax(1).eq(train_y).double().mean().item() * 100
        test = (xt @ weight + bias).argmax(1).eq(test_y).double().mean().item() * 100
    return ProbeResult(train, test, int(optimizer.state[optimizer._params[0]].get("n_iter", 0)))
