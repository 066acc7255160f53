"""Writes tests/fixtures/rank-losses.json: sentence-transformers' own learning-to-rank losses
(LambdaLoss with its default NDCG-Loss2++ weighting, RankNetLoss, PListMLELoss) and their
gradients on fixed scores, for crossenc's losses to match.

    python scripts/st_rank_losses.py tests/fixtures/rank-losses.json

Needs torch and sentence-transformers (see ../shared/reference/README.md). The losses call a
stand-in for the model that returns the fixed scores as a leaf tensor, so what is computed is
the losses' own code from the scores on.
"""
import json
import sys

import sentence_transformers
import torch
from sentence_transformers.cross_encoder.losses import LambdaLoss, PListMLELoss, RankNetLoss


class FixedScores:
    """What the losses read of a CrossEncoder: `num_labels`, `device`, `preprocess`, and the
    forward's `scores`, here the fixed scores of each (query, document) pair."""

    num_labels = 1
    device = torch.device("cpu")

    def __init__(self, scores):
        self.scores = torch.tensor(scores, dtype=torch.float32, requires_grad=True)

    def preprocess(self, pairs, prompt=None, task=None):
        return {"index": torch.tensor([int(d) for _, d in pairs])}

    def __call__(self, tokens):
        return {"scores": self.scores[tokens["index"]]}


def case(loss_class, scores, labels, docs):
    model = FixedScores([s for row in scores for s in row])
    queries = [f"q{i}" for i in range(len(scores))]
    docs_list = [[str(i * docs + j) for j in range(docs)] for i in range(len(scores))]
    loss = loss_class(model)([queries, docs_list], [torch.tensor(row) for row in labels])
    loss.backward()
    return {"loss": loss_class.__name__, "docs": docs, "scores": scores, "labels": labels,
            "value": loss.item(), "grad": model.scores.grad.tolist()}


def main(out):
    g = torch.Generator().manual_seed(7)
    cases = []
    for queries, docs in [(3, 4), (2, 8), (4, 6)]:
        scores = (torch.randn(queries, docs, generator=g) * 3).tolist()
        binary = [[1.0] + [0.0] * (docs - 1) for _ in range(queries)]  # a positive, then negatives
        graded = torch.randint(0, 4, (queries, docs), generator=g).float().tolist()
        for labels in (binary, graded):
            for loss_class in (LambdaLoss, RankNetLoss):
                cases.append(case(loss_class, scores, labels, docs))
        # PListMLE takes the input order as the true order: a positive first.
        cases.append(case(PListMLELoss, scores, binary, docs))
    with open(out, "w") as f:
        json.dump({"sentence_transformers": sentence_transformers.__version__,
                   "torch": torch.__version__, "cases": cases}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
