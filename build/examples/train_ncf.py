"""Train the two example Neural Collaborative Filtering recommenders.

The NCF workshop serves two recommenders (food and fashion) side by side. No
dataset can be downloaded here, so each model is trained on user-item
interactions generated from hidden user tastes: users belong to taste groups,
items to categories, and a user interacts mostly with the categories their
group likes. A model that learnt anything ranks liked categories above the
rest, which the script checks before it writes weights.

The model is NeuMF (He et al., 2017): a generalised matrix factorisation
branch and an MLP branch over separate embeddings, fused by one linear layer.
It is saved as TorchScript, so the serving code (`model.py`) needs no copy of
this class.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger("train_ncf")


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """The generated world one recommender is trained on."""

    name: str
    num_users: int
    num_items: int
    num_groups: int
    seed: int


CATALOGUES = (
    Catalogue("ncf_food", num_users=2000, num_items=500, num_groups=8, seed=7),
    Catalogue("ncf_fashion", num_users=3000, num_items=800, num_groups=10, seed=11),
)
WEIGHTS_FILE = "ncf.pt"


class NeuMF(nn.Module):
    def __init__(self, num_users: int, num_items: int, gmf_dim: int = 16, mlp_dim: int = 32):
        super().__init__()
        self.num_users = num_users
        self.num_items = num_items
        self.gmf_user = nn.Embedding(num_users, gmf_dim)
        self.gmf_item = nn.Embedding(num_items, gmf_dim)
        self.mlp_user = nn.Embedding(num_users, mlp_dim)
        self.mlp_item = nn.Embedding(num_items, mlp_dim)
        self.mlp = nn.Sequential(
            nn.Linear(2 * mlp_dim, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 16),
            nn.ReLU(),
        )
        self.head = nn.Linear(gmf_dim + 16, 1)

    def forward(self, user_id: torch.Tensor, item_id: torch.Tensor) -> torch.Tensor:
        """Scores in [0, 1] for id tensors of shape [batch, 1]."""
        users = user_id.reshape(-1)
        items = item_id.reshape(-1)
        gmf = self.gmf_user(users) * self.gmf_item(items)
        mlp = self.mlp(torch.cat([self.mlp_user(users), self.mlp_item(items)], dim=1))
        return torch.sigmoid(self.head(torch.cat([gmf, mlp], dim=1)))


def generate_interactions(cat: Catalogue, per_user: int = 40) -> tuple[torch.Tensor, ...]:
    """Positive and negative (user, item, label) triples from hidden tastes."""
    gen = torch.Generator().manual_seed(cat.seed)
    user_group = torch.randint(cat.num_groups, (cat.num_users,), generator=gen)
    item_category = torch.randint(cat.num_groups, (cat.num_items,), generator=gen)
    # Each group likes its own category and, more weakly, the next one.
    affinity = torch.full((cat.num_groups, cat.num_groups), 0.05)
    for g in range(cat.num_groups):
        affinity[g, g] = 1.0
        affinity[g, (g + 1) % cat.num_groups] = 0.4
    like = affinity[user_group][:, item_category]  # [users, items]
    users = torch.arange(cat.num_users).repeat_interleave(per_user)
    positives = torch.multinomial(like, per_user, replacement=True, generator=gen).reshape(-1)
    dislike = 1.05 - like
    negatives = torch.multinomial(dislike, per_user, replacement=True, generator=gen).reshape(-1)
    user_ids = torch.cat([users, users])
    item_ids = torch.cat([positives, negatives])
    labels = torch.cat([torch.ones(len(users)), torch.zeros(len(users))])
    return user_ids, item_ids, labels, like


def train(cat: Catalogue, epochs: int = 6) -> NeuMF:
    torch.manual_seed(cat.seed)
    user_ids, item_ids, labels, like = generate_interactions(cat)
    model = NeuMF(cat.num_users, cat.num_items)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    loss_fn = nn.BCELoss()
    for epoch in range(epochs):
        order = torch.randperm(len(labels))
        total = 0.0
        for batch in order.split(1024):
            optimiser.zero_grad()
            scores = model(user_ids[batch, None], item_ids[batch, None]).reshape(-1)
            loss = loss_fn(scores, labels[batch])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        log.info("%s: epoch %d loss %.4f", cat.name, epoch + 1, total / len(labels))
    check_learnt(model, like)
    return model


def check_learnt(model: NeuMF, like: torch.Tensor) -> None:
    """Refuse weights that do not rank liked items above disliked ones."""
    model.eval()
    with torch.no_grad():
        users = torch.arange(min(200, model.num_users))
        grid_users = users.repeat_interleave(model.num_items)[:, None]
        grid_items = torch.arange(model.num_items).repeat(len(users))[:, None]
        scores = model(grid_users, grid_items).reshape(len(users), -1)
    liked = like[users] >= 1.0
    gap = scores[liked].mean() - scores[~liked].mean()
    if gap < 0.3:
        raise RuntimeError(f"training did not separate liked from other items (gap {gap:.2f})")
    log.info("liked items score %.2f higher on average", gap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, required=True, help="model repository")
    parser.add_argument("--force", action="store_true", help="retrain even if weights exist")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for cat in CATALOGUES:
        target = args.repository / cat.name / "1" / WEIGHTS_FILE
        if target.exists() and not args.force:
            log.info("%s: %s exists, skipping (use --force to retrain)", cat.name, target)
            continue
        model = train(cat)
        scripted = torch.jit.script(model)
        partial = target.with_suffix(".partial")
        scripted.save(str(partial))
        partial.replace(target)
        log.info("%s: wrote %s", cat.name, target)


if __name__ == "__main__":
    main()
