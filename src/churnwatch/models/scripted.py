"""Fitted tabular baselines as TorchScript modules, so a baseline exports as one model.pt like a network.

`script_estimator` turns an estimator that `models/tabular.py` fitted into an `nn.Module` whose
`forward(aggregates)` is the native `predict_proba(aggregates)[:, 1]` (uncalibrated, float64) on the raw
aggregate matrix, the AggregateTable values the estimator was fitted on, and whose `occluded` gives the
same with each column in turn set to its training mean (the drivers of a tabular model.pt). The model file
needs torch only: no scikit-learn or LightGBM objects, no pickles.

- Linear models and naive Bayes repeat their preprocessing with tensor ops (signed log1p and
  standardisation of the numbers, one-hot of the static categories by comparison with the fitted
  categories), then the linear layer, the calibrated SVM folds or the Gaussian class likelihoods.
- Tree ensembles (LightGBM, scikit-learn decision trees and random forests) walk all their trees at once:
  every node of every tree sits in one flat table, leaves point to themselves, and each step moves every
  (row, tree) pair one level down. Comparisons are float64, as natively, so a value on a threshold goes
  the same way; missing values go where the native model sends them (LightGBM's missing types None, Zero
  and NaN with default_left, its categorical splits; scikit-learn's `missing_go_to_left`). Occlusion
  walks again only the (row, tree) pairs whose path splits on the occluded column.
- BG/NBD (`btyd` fitted on training): P(no purchase within the horizon) from the fitted (r, alpha, a, b)
  with torch.lgamma. Pareto/NBD and `fit_on=scored` (refitted on the scored rows) are NotScriptable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

SCRIPTABLE = ("logreg", "decision_tree", "random_forest", "naive_bayes", "linear_svm", "lightgbm", "btyd")
LIGHTGBM_ZERO = float(np.float32(1e-35))
"""LightGBM's kZeroThreshold (a float): |value| at most this is zero for missing_type Zero."""


class NotScriptable(ValueError):
    """An estimator (or a setting of one) with no TorchScript form here."""


def _float64(values: Any) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.float64))


def _long(values: Any) -> Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64))


def _positive_class(classes: Any, what: str) -> None:
    if [int(c) for c in classes] != [0, 1]:
        raise NotScriptable(f"{what}: classes {list(classes)}, expected [0, 1] (churn is class 1)")


class Scripted(nn.Module):
    """A scripted estimator: `forward(aggregates)` is P(churn) per row, float64; `occluded` the same with
    each column in turn set to its centre, what drivers by occlusion compare against."""

    @torch.jit.export
    def occluded(self, x: Tensor, center: Tensor) -> Tensor:
        """(rows, columns): P(churn) with column j set to center[j], for every j, in one forward."""
        n, width = x.shape
        eye = torch.eye(width, dtype=torch.bool, device=x.device).unsqueeze(1)
        rows = torch.where(eye, center.to(x.device).double().view(1, 1, -1), x.double().unsqueeze(0))
        return self.forward(rows.reshape(width * n, width)).reshape(width, n).T


class LinearInputs(nn.Module):
    """`tabular._linear_inputs` as fitted: signed log1p and standardisation of the numeric columns, then
    one-hot columns of the categorical ones (an unknown category is all zeros)."""

    def __init__(self, transformer: Any):
        super().__init__()
        blocks = [(name, t, cols) for name, t, cols in transformer.transformers_ if len(cols)]
        if [name for name, _, _ in blocks] not in (["num"], ["num", "cat"]):
            raise NotScriptable(f"linear inputs {[b[0] for b in blocks]}: expected the num and cat blocks")
        _, numeric, num_cols = blocks[0]
        scaler = numeric[-1]
        self.register_buffer("num_cols", _long(num_cols))
        self.register_buffer("mean", _float64(scaler.mean_))
        self.register_buffer("scale", _float64(scaler.scale_))
        onehot_cols: list[int] = []
        categories: list[float] = []
        if len(blocks) == 2:
            _, encoder, cat_cols = blocks[1]
            for col, cats in zip(cat_cols, encoder.categories_, strict=True):
                onehot_cols += [int(col)] * len(cats)
                categories += [float(c) for c in cats]
        self.register_buffer("onehot_cols", _long(onehot_cols))
        self.register_buffer("categories", _float64(categories))

    def forward(self, x: Tensor) -> Tensor:
        x = x.double()
        num = x[:, self.num_cols]
        z = (torch.sign(num) * torch.log1p(num.abs()) - self.mean) / self.scale
        v = x[:, self.onehot_cols]
        hot = (v == self.categories) | (torch.isnan(v) & torch.isnan(self.categories))
        return torch.cat([z, hot.double()], dim=1)


class LinearModel(Scripted):
    """The linear inputs, then a head: logistic regression, the calibrated SVM, naive Bayes."""

    def __init__(self, inputs: LinearInputs, head: nn.Module):
        super().__init__()
        self.inputs = inputs
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.inputs(x))


class MeanOfSigmoids(nn.Module):
    """mean_k sigmoid(x · w_k + b_k): logistic regression (one k) and the sigmoid-calibrated SVM folds."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        super().__init__()
        self.register_buffer("weight", _float64(weight))
        self.register_buffer("bias", _float64(bias))

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(z @ self.weight.T + self.bias).mean(dim=1)


class GaussianBayes(nn.Module):
    """GaussianNB: P(class 1) from the two classes' joint log-likelihoods."""

    def __init__(self, nb: Any):
        super().__init__()
        var = np.asarray(nb.var_, dtype=np.float64)
        const = np.log(nb.class_prior_) - 0.5 * np.log(2 * np.pi * var).sum(axis=1)
        self.register_buffer("theta", _float64(nb.theta_))
        self.register_buffer("var", _float64(var))
        self.register_buffer("const", _float64(const))

    def forward(self, z: Tensor) -> Tensor:
        jll = self.const - 0.5 * ((z.unsqueeze(1) - self.theta) ** 2 / self.var).sum(dim=2)
        return torch.sigmoid(jll[:, 1] - jll[:, 0])


@dataclass
class _Nodes:
    """One tree's nodes, root first; a leaf has both children -1 and its output in `value`."""

    feature: list[int]
    threshold: list[float]
    left: list[int]
    right: list[int]
    nan_left: list[bool]
    """Where a missing value goes."""
    zero_default: list[bool]
    """LightGBM missing_type Zero: a zero value goes the default way (`nan_left`)."""
    categories: list[list[int] | None]
    """A categorical split's categories that go left; None for a numerical split."""
    value: list[float]
    depth: int


class TreeEnsemble(Scripted):
    """All trees of a model in one flat node table, walked one level per step for every row and tree; the
    output is the sum of the leaf values through a sigmoid (LightGBM) or their mean (scikit-learn)."""

    def __init__(
        self, trees: Sequence[_Nodes], average: bool, scale: float = 1.0, float32_inputs: bool = False
    ):
        super().__init__()
        offsets = np.cumsum([0, *(len(t.value) for t in trees)])
        cat_sets = [c for t in trees for c in t.categories if c is not None]
        width = max((max(c, default=-1) + 1 for c in cat_sets), default=1)
        table = np.zeros((len(cat_sets), width), dtype=bool)
        for row, cats in enumerate(cat_sets):
            table[row, cats] = True
        has_set = np.array([c is not None for t in trees for c in t.categories], dtype=bool)
        left, right = [], []
        for tree, start in zip(trees, offsets[:-1], strict=True):
            for i, (lo, hi) in enumerate(zip(tree.left, tree.right, strict=True)):
                leaf = lo < 0  # a leaf is its own child: walking on from it stays there
                left.append(start + (i if leaf else lo))
                right.append(start + (i if leaf else hi))

        def flat(field: str) -> list[Any]:
            return [v for t in trees for v in getattr(t, field)]

        self.register_buffer("roots", _long(offsets[:-1]))
        self.register_buffer("feature", _long(flat("feature")))
        self.register_buffer("threshold", _float64(flat("threshold")))
        self.register_buffer("left", _long(left))
        self.register_buffer("right", _long(right))
        self.register_buffer("internal", self.left != torch.arange(len(left)))
        self.register_buffer("nan_left", torch.tensor(flat("nan_left"), dtype=torch.bool))
        self.register_buffer("zero_default", torch.tensor(flat("zero_default"), dtype=torch.bool))
        self.register_buffer("cat_row", _long(np.where(has_set, np.cumsum(has_set) - 1, -1)))
        self.register_buffer("cat_table", torch.as_tensor(table))
        self.register_buffer("value", _float64(flat("value")))
        self.depth = max((t.depth for t in trees), default=0)
        self.average = average
        self.scale = scale
        self.float32_inputs = float32_inputs
        """scikit-learn trees compare float32 inputs (with float64 thresholds)."""
        self.zero = LIGHTGBM_ZERO
        self.zero_missing = any(flat("zero_default"))
        self.categorical = bool(cat_sets)

    def _inputs(self, x: Tensor) -> Tensor:
        return x.float().double() if self.float32_inputs else x.double()

    def _step(self, node: Tensor, v: Tensor) -> Tensor:
        """Each node's child for the value `v` of its split feature, as the native model picks it."""
        go_left = torch.where(torch.isnan(v), self.nan_left[node], v <= self.threshold[node])
        if self.zero_missing:
            zero = self.zero_default[node] & (v.abs() <= self.zero)
            go_left = torch.where(zero, self.nan_left[node], go_left)
        if self.categorical:
            # LightGBM: the value truncated to an int; NaN and negatives go right
            row = self.cat_row[node]
            code = torch.trunc(torch.nan_to_num(v, nan=-1.0))
            known = (code >= 0) & (code < self.cat_table.shape[1])
            member = self.cat_table[row.clamp(min=0), code.clamp(0, self.cat_table.shape[1] - 1).long()]
            go_left = torch.where(row >= 0, member & known, go_left)
        return torch.where(go_left, self.left[node], self.right[node])

    def _link(self, total: Tensor) -> Tensor:
        """The summed leaf values → P(churn)."""
        return total / self.roots.shape[0] if self.average else torch.sigmoid(self.scale * total)

    def forward(self, x: Tensor) -> Tensor:
        x = self._inputs(x)
        node = self.roots.unsqueeze(0).expand(x.shape[0], -1)
        for _ in range(self.depth):
            node = self._step(node, x.gather(1, self.feature[node]))
        return self._link(self.value[node].sum(dim=1))

    @torch.jit.export
    def occluded(self, x: Tensor, center: Tensor) -> Tensor:
        """As `Scripted.occluded`, but only the (row, tree) pairs whose path splits on column j walk their
        tree again for it: a path reads a few of the columns, so this costs a few forwards, not one each."""
        x = self._inputs(x)
        n, width = x.shape
        node = self.roots.unsqueeze(0).expand(n, -1)
        on_path = torch.zeros(n, self.roots.shape[0], width + 1, dtype=torch.bool, device=x.device)
        for _ in range(self.depth):
            split = torch.where(self.internal[node], self.feature[node] + 1, 0)  # 0: at a leaf already
            on_path.scatter_(2, split.unsqueeze(2), True)
            node = self._step(node, x.gather(1, self.feature[node]))
        leaf_value = self.value[node]
        column, row, tree = on_path[:, :, 1:].permute(2, 0, 1).nonzero().unbind(1)
        value = self._inputs(center.to(x.device))[column]
        walk = self.roots[tree]
        for _ in range(self.depth):
            feature = self.feature[walk]
            walk = self._step(walk, torch.where(feature == column, value, x[row, feature]))
        total = leaf_value.sum(dim=1).unsqueeze(1).repeat(1, width)
        total.view(-1).index_add_(0, row * width + column, self.value[walk] - leaf_value[row, tree])
        return self._link(total)


def _sklearn_nodes(tree: Any) -> _Nodes:
    """A fitted scikit-learn tree: P(class 1) at each leaf; NaN goes where `missing_go_to_left` says."""
    _positive_class(tree.classes_, type(tree).__name__)
    t = tree.tree_
    value = t.value[:, 0, :]
    total = value.sum(axis=1)
    p1 = value[:, 1] / np.where(total > 0, total, 1.0)
    return _Nodes(
        feature=[max(int(f), 0) for f in t.feature],
        threshold=[float(v) for v in t.threshold],
        left=[int(c) for c in t.children_left],
        right=[int(c) for c in t.children_right],
        nan_left=[bool(v) for v in t.missing_go_to_left],
        zero_default=[False] * t.node_count,
        categories=[None] * t.node_count,
        value=[float(v) if lo < 0 else 0.0 for v, lo in zip(p1, t.children_left, strict=True)],
        depth=int(t.max_depth),
    )


def _lightgbm_nodes(structure: dict[str, Any]) -> _Nodes:
    """One tree of LightGBM's `dump_model()`, flattened depth-first."""
    nodes = _Nodes([], [], [], [], [], [], [], [], 0)

    def add(node: dict[str, Any], depth: int) -> int:
        i = len(nodes.value)
        nodes.depth = max(nodes.depth, depth)
        for field in (nodes.left, nodes.right, nodes.feature):
            field.append(-1 if field is not nodes.feature else 0)
        nodes.threshold.append(0.0)
        nodes.nan_left.append(False)
        nodes.zero_default.append(False)
        nodes.categories.append(None)
        if "leaf_value" in node:
            if "leaf_coeff" in node:
                raise NotScriptable("lightgbm: linear trees (linear_tree=true) have no TorchScript form here")
            nodes.value.append(float(node["leaf_value"]))
            return i
        nodes.value.append(0.0)
        missing, default_left = node["missing_type"], bool(node["default_left"])
        nodes.feature[i] = int(node["split_feature"])
        if node["decision_type"] == "==":
            nodes.categories[i] = [int(c) for c in str(node["threshold"]).split("||")]
        elif node["decision_type"] == "<=":
            nodes.threshold[i] = float(node["threshold"])
            # missing_type None reads a missing value as 0; Zero sends zeros (and so NaN) the default way
            nodes.nan_left[i] = default_left if missing in ("Zero", "NaN") else nodes.threshold[i] >= 0.0
            nodes.zero_default[i] = missing == "Zero"
        else:
            raise NotScriptable(f"lightgbm: decision type {node['decision_type']!r}")
        nodes.left[i] = add(node["left_child"], depth + 1)
        nodes.right[i] = add(node["right_child"], depth + 1)
        return i

    add(structure, 0)
    return nodes


def _lightgbm(model: Any) -> TreeEnsemble:
    dump = model.booster_.dump_model()
    objective = str(dump.get("objective", ""))
    if not objective.startswith("binary"):
        raise NotScriptable(f"lightgbm: objective {objective!r}, expected binary")
    if dump.get("average_output"):
        raise NotScriptable("lightgbm: boosting_type=rf (averaged output) has no TorchScript form here")
    _positive_class(model.classes_, "lightgbm")
    scale = float(objective.partition("sigmoid:")[2].split()[0]) if "sigmoid:" in objective else 1.0
    return TreeEnsemble([_lightgbm_nodes(t["tree_structure"]) for t in dump["tree_info"]], False, scale)


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


class BGNBDNoPurchase(Scripted):
    """BTYDClassifier with BG/NBD fitted on training: P(no purchase within the horizon) from the
    purchase-history columns, as models/btyd/classifier.py computes it."""

    def __init__(self, model: Any, names: Sequence[str]):
        super().__init__()
        from churnwatch.models.btyd import FIRST_PURCHASE, OCCASIONS, RECENCY

        kind, fit_on = getattr(model, "model", "bgnbd"), getattr(model, "fit_on", "train")
        if (kind, fit_on) != ("bgnbd", "train"):
            raise NotScriptable(
                f"btyd: model={kind}, fit_on={fit_on}; only BG/NBD fitted on training (model=bgnbd, "
                "fit_on=train) has a TorchScript form here"
            )
        missing = [c for c in (OCCASIONS, RECENCY, FIRST_PURCHASE) if c not in names]
        if missing:
            raise NotScriptable(f"btyd: aggregate columns {missing} are missing")
        self.occasions, self.recency, self.first = (
            names.index(c) for c in (OCCASIONS, RECENCY, FIRST_PURCHASE)
        )
        p = model.params_
        self.r, self.alpha, self.a, self.b = float(p.r), float(p.alpha), float(p.a), float(p.b)
        self.horizon = float(model.horizon_days)
        # the parts of the log-likelihood terms that do not depend on the customer
        self.common = -math.lgamma(self.r) + self.r * math.log(self.alpha) - _lbeta(self.a, self.b)
        self.lgamma_a = math.lgamma(self.a)
        self.lgamma_a1 = math.lgamma(self.a + 1)

    def _terms(self, x: Tensor, tx: Tensor, T: Tensor) -> tuple[Tensor, Tensor]:
        """log of the 'alive at T' and 'died after the last purchase' likelihood terms
        (models/btyd/bgnbd.py)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        common = torch.lgamma(r + x) + self.common
        a1 = (
            common
            + self.lgamma_a
            + torch.lgamma(b + x)
            - torch.lgamma(a + b + x)
            - (r + x) * torch.log(alpha + T)
        )
        xs = x.clamp(min=1.0)  # the second term exists for x > 0 only: computed safely, then masked
        a2 = common + self.lgamma_a1 + torch.lgamma(b + xs - 1) - torch.lgamma(a + b + xs)
        a2 = torch.where(x > 0, a2 - (r + x) * torch.log(alpha + tx), -math.inf)
        return a1, a2

    def forward(self, values: Tensor) -> Tensor:
        values = values.double()
        x = (values[:, self.occasions] - 1).clamp(min=0.0)
        T = values[:, self.first].clamp(min=0.0)
        tx = torch.minimum((T - values[:, self.recency]).clamp(min=0.0), T)
        a1, a2 = self._terms(x, tx, T)
        later, _ = self._terms(x, tx, T + self.horizon)
        return torch.exp(torch.logaddexp(later, a2) - torch.logaddexp(a1, a2)).clamp(0.0, 1.0)


def script_estimator(estimator: Any, name: str, names: Sequence[str]) -> Scripted:
    """`estimator` (as `tabular.build_estimator(name, ...)` made and `tabular._fit` fitted it on aggregate
    columns `names`) as a module whose `forward(aggregates)` is `predict_proba(aggregates)[:, 1]`;
    NotScriptable for an estimator or setting that has no such form here."""
    width = getattr(estimator, "n_features_in_", len(names))
    if width != len(names):
        raise NotScriptable(f"{name}: fitted on {width} columns, the aggregate table has {len(names)}")
    if name in ("logreg", "naive_bayes", "linear_svm"):
        inputs, clf = estimator.named_steps["x"], estimator.named_steps["clf"]
        return LinearModel(LinearInputs(inputs), _linear_head(clf, name))
    if name == "decision_tree":
        return TreeEnsemble([_sklearn_nodes(estimator)], True, float32_inputs=True)
    if name == "random_forest":
        _positive_class(estimator.classes_, name)
        return TreeEnsemble([_sklearn_nodes(t) for t in estimator.estimators_], True, float32_inputs=True)
    if name == "lightgbm":
        return _lightgbm(estimator)
    if name == "btyd":
        return BGNBDNoPurchase(estimator, list(names))
    raise NotScriptable(f"{name!r} has no TorchScript form; scriptable estimators: {SCRIPTABLE}")


def _linear_head(clf: Any, name: str) -> nn.Module:
    _positive_class(clf.classes_, name)
    if name == "logreg":
        return MeanOfSigmoids(clf.coef_, clf.intercept_)
    if name == "naive_bayes":
        return GaussianBayes(clf)
    # CalibratedClassifierCV(LinearSVC, sigmoid): P = mean over folds of 1 / (1 + exp(a · d + b)), d = x·w + c
    weights, biases = [], []
    for fold in clf.calibrated_classifiers_:
        if fold.method != "sigmoid":
            raise NotScriptable(f"linear_svm: calibration method {fold.method!r}, expected sigmoid")
        (sigmoid,) = fold.calibrators
        svm = fold.estimator
        weights.append(-sigmoid.a_ * np.ravel(svm.coef_))
        biases.append(-(sigmoid.a_ * float(np.ravel(svm.intercept_)[0]) + sigmoid.b_))
    return MeanOfSigmoids(np.stack(weights), np.array(biases))
