"""BADGE: k-means++ seeding over gradient embeddings (uncertainty and diversity in one space).

Reference: J. T. Ash, C. Zhang, A. Krishnamurthy, J. Langford, A. Agarwal, "Deep Batch Active Learning by Diverse,
Uncertain Gradient Lower Bounds", ICLR 2020. The gradient of the cross-entropy loss with respect to the last
(linear) layer, at the model's own prediction ŷ as label, is exactly ``g_i = (p_i - onehot(ŷ_i)) ⊗ h_i``: the
probabilities times the penultimate features. Its norm is large for uncertain items, and its direction encodes the
features, so k-means++ seeding over ``g`` picks items that are uncertain *and* different from each other.

Here ``h`` are the stored embeddings (the pooled features the head reads; unit length, as every embedding in a
``PoolView``) and ``p`` the stored probabilities, so nothing is recomputed and the (N, C·D) gradient matrix is never
built: ``|g_i - g_j|² = |a_i|²|h_i|² + |a_j|²|h_j|² - 2 (a_i·a_j)(h_i·h_j)`` with ``a = p - onehot(ŷ)``, one
(N, C) and one (N, D) matrix-vector product per pick, O(budget · N · (C + D)) in all. The first center is the item
with the largest gradient norm (as the authors' code does), each next one is drawn with probability ∝ its squared
distance to the nearest center (seeded by ``PoolView.seed``). Classification only: it needs ``PoolView.probs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies.base import PoolView, Selection, StrategyBase
from strategies.cover import Cover
from strategies.index import coarse_clusters

__all__ = ["BadgeStrategy", "gradient_embeddings"]


def gradient_embeddings(probs: NDArray[np.floating], features: NDArray[np.floating]) -> NDArray[np.float64]:
    """The (N, C·D) last-layer gradient embeddings ``(p - onehot(argmax p)) ⊗ h`` — what ``BadgeStrategy`` works
    with implicitly; for tests and small pools."""
    a = np.asarray(probs, dtype=np.float64).copy()
    a[np.arange(len(a)), np.argmax(a, axis=1)] -= 1.0
    h = np.asarray(features, dtype=np.float64)
    return (a[:, :, None] * h[:, None, :]).reshape(len(a), -1)


@dataclass(frozen=True)
class BadgeStrategy(StrategyBase):
    """k-means++ seeding over last-layer gradient embeddings; see the module docstring. Scores are each pick's
    squared gradient-space distance to the nearest earlier pick when it was drawn (the first: its squared norm)."""

    name: str = field(default="badge", init=False)
    measure: None = field(default=None, init=False)
    needs_embeddings: bool = field(default=True, init=False)
    needs_probs: bool = field(default=True, init=False)

    def _select(self, pool: PoolView, budget: int) -> Selection:
        usable = np.flatnonzero(pool.usable)
        h = pool.embeddings_for(self.name)[usable]
        a = pool.probs_for(self.name)[usable].astype(np.float64)
        a[np.arange(len(a)), np.argmax(a, axis=1)] -= 1.0
        norms = np.einsum("ij,ij->i", a, a) * np.einsum("ij,ij->i", h, h).astype(np.float64)  # |g_i|²
        cover = Cover(h, pool.reference_embeddings, pool.min_distance)
        rng = np.random.default_rng(pool.seed)
        d2 = np.full(len(usable), np.inf)  # squared distance to the nearest center
        alive = ~cover.duplicates()
        skipped = int(np.count_nonzero(~alive))
        picked: list[int] = []
        scores: list[float] = []
        while len(picked) < budget and alive.any():
            if not picked:
                i = int(np.argmax(np.where(alive, norms, -np.inf)))
                score = float(norms[i])
            else:
                weights = np.where(alive, d2, 0.0)
                total = float(weights.sum())
                # every candidate left coincides with a center: take them in order (ties to the lower index)
                i = int(rng.choice(len(weights), p=weights / total)) if total > 0 else int(np.flatnonzero(alive)[0])
                score = float(d2[i])
            picked.append(i)
            scores.append(score)
            alive[i] = False
            new = norms + norms[i] - 2.0 * (a @ a[i]) * (h @ h[i]).astype(np.float64)
            np.minimum(d2, np.maximum(new, 0.0), out=d2)
            cover.add(i)
            dup = alive & cover.duplicates()
            skipped += int(np.count_nonzero(dup))
            alive &= ~dup
        indices = usable[np.asarray(picked, dtype=np.int64)].astype(np.int64)
        x = pool.embeddings_for(self.name)
        return Selection(
            indices=indices,
            scores=np.asarray(scores, dtype=np.float64),
            clusters=coarse_clusters(x[indices], pool.seed),
            skipped=skipped,
        )
