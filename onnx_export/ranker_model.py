"""The ranking network: DeepFM + DCN-v2 over the inputs of ``kairos.schemas.features``, with two heads.

``score``        relevance / purchase logit from (user state, item, context) -- position-free, so it ranks
                 candidates before they are shown.
``click_logit``  the click head: its own relevance logit plus a learned bias per display position (the
                 position-aware "PAL" trick: position explains part of the clicks during training; at serving
                 position 0 means "not shown yet" and carries its own bias).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from kairos.schemas.features import CATEGORY_BUCKETS, ITEM_BUCKETS, MAX_POSITION, RANKER_DENSE_DIM, RANKER_INPUTS


@dataclass(frozen=True)
class RankerConfig:
    """Sizes of the ranking network (defaults: ~1.2 M parameters, mostly the item embedding table)."""

    embed_dim: int = 16
    cross_layers: int = 2
    hidden: tuple[int, ...] = (64, 32)
    category_buckets: int = CATEGORY_BUCKETS
    item_buckets: int = ITEM_BUCKETS
    dense_dim: int = RANKER_DENSE_DIM
    max_position: int = MAX_POSITION

    def to_dict(self) -> dict:
        return asdict(self)


class CrossLayer(nn.Module):
    """DCN-v2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.linear(x) + x


class DeepFMCrossRanker(nn.Module):
    """(dense, category_id, item_id, position) -> (score, click_logit), each of shape (B,)."""

    def __init__(self, config: RankerConfig = RankerConfig()):
        super().__init__()
        c = self.config = config
        self.category_emb = nn.Embedding(c.category_buckets, c.embed_dim)
        self.item_emb = nn.Embedding(c.item_buckets, c.embed_dim)
        self.dense_field = nn.Linear(c.dense_dim, c.embed_dim)  # dense block as one FM field
        self.position_bias = nn.Embedding(c.max_position + 1, 1)
        width = c.dense_dim + 2 * c.embed_dim
        self.cross = nn.ModuleList(CrossLayer(width) for _ in range(c.cross_layers))
        layers, prev = [], width
        for h in c.hidden:
            layers += [nn.Linear(prev, h), nn.ReLU()]
            prev = h
        self.deep = nn.Sequential(*layers)
        self.score_head = nn.Linear(width + prev, 1)
        self.click_head = nn.Linear(width + prev, 1)
        for emb in (self.category_emb, self.item_emb):
            nn.init.normal_(emb.weight, std=0.01)
        nn.init.zeros_(self.position_bias.weight)

    def forward(self, dense, category_id, item_id, position):
        cat = self.category_emb(category_id)
        item = self.item_emb(item_id)
        x0 = torch.cat([dense, cat, item], dim=1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        h = torch.cat([x, self.deep(x0)], dim=1)
        fm = _fm_interaction(torch.stack([cat, item, self.dense_field(dense)], dim=1))
        score = self.score_head(h).squeeze(1) + fm
        click = self.click_head(h).squeeze(1) + self.position_bias(position).squeeze(1)
        return score, click


def _fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    # Sum of pairwise dot products of field embeddings: 0.5 * ((sum v)^2 - sum v^2), summed over the embedding axis.
    square_of_sum = fields.sum(dim=1).pow(2)
    sum_of_square = fields.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)


def example_inputs(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs with the contract's names and dtypes (for export and parity checks)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "dense": torch.randn(batch, RANKER_DENSE_DIM, generator=g),
        "category_id": torch.randint(0, CATEGORY_BUCKETS, (batch,), generator=g),
        "item_id": torch.randint(0, ITEM_BUCKETS, (batch,), generator=g),
        "position": torch.randint(0, MAX_POSITION + 1, (batch,), generator=g),
    }


INPUT_NAMES = tuple(RANKER_INPUTS)
