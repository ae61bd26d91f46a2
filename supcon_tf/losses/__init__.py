"""The SupCon loss family: pure per-anchor loss functions and a thin, serialisable Keras `Loss` wrapper.

Notation (Khosla et al., 2020, arXiv 2004.11362; docs/architecture.md):
a batch of B samples is seen in V views; the embeddings are `features`
`[B, V, D]`. Every embedding of the contrast set (all B*V of them) is indexed
view-major, row `v * B + b`. For anchor i, A(i) is the contrast set without i
itself and P(i) the members of A(i) that are positives of i: same label
(integer `labels`), a shared class (multi-hot `labels`), whatever `mask` or a
`pair_weights` rule on label rows says, or, with none of them, only the other
views of the same sample (SimCLR's NT-Xent).

    L_out(i) = -(tau / base_tau) / |P(i)| * sum_{p in P(i)} log softmax_{a in A(i)}(z_i.z_a / tau)[p]   (eq. 2)
    L_in(i)  = -(tau / base_tau) * log( 1/|P(i)| * sum_{p in P(i)} softmax_{a in A(i)}(z_i.z_a / tau)[p] )  (eq. 3)

Positives carry weights w_ip >= 0 (module `weights`): 1 from labels, any real value
from `mask` or `pair_weights`; an entry of weight 0 is a negative. With
weights, |P(i)| becomes W_i = sum_p w_ip and the sums over P(i) are
w_ip-weighted: L_out(i) = -(tau / base_tau) * sum_p w_ip l(i, p) / W_i, and
L_in(i) = -(tau / base_tau) * log(sum_p w_ip exp l(i, p) / W_i), with
l(i, p) the log-probability below.

The guide (every option, its paper and the other libraries it equals):
docs/losses.md. The batch loss is the mean of L(i) over anchors with W_i > 0. Anchors
without positives are excluded (and reported by the per-anchor form); a batch
where no anchor has a positive gives 0 with zero gradients. The
self-similarity is masked with a large finite negative number *before* a
row-wise log-sum-exp, so nothing overflows down to tau = 0.005 in float32 and
no inf/NaN ever reaches a gradient.

Options of google-research's `supcon/losses.py` (`denominator_mode`,
`positives_cap`), in our notation. For anchor i (sample s, view v) every
contrast entry other than i itself is exactly one of:

  P(i)  positives: the entries of weight w > 0 that survive the cap: the
        other views of s (when s is its own positive: always with integer
        labels or none, `mask[s, s] > 0`, a multi-hot row with a class, or
        a rule weighing (s, s) > 0), every view of the other samples of
        weight > 0 for s, and the queue entries of weight > 0;
  X(i)  capped out: positives of s removed by `positives_cap` (neither
        positives nor negatives: they appear in no numerator or denominator);
  N(i)  negatives: everything else, i.e. the entries of weight 0.

With s_ia = z_i.z_a / tau, the log-probability of positive p is
l(i, p) = s_ip - log Z(i, p), with, by `denominator`:

  "all"            Z(i)    = sum_{a in P(i) u N(i)} exp(s_ia)    (= A(i) without a cap; the paper)
  "one_positive"   Z(i, p) = exp(s_ip) + sum_{n in N(i)} exp(s_in)
                   (each positive against the negatives only: SINCERE,
                   Feeney & Hughes; l(i, p) = -softplus(log sum_N exp - s_ip) <= 0)
  "only_negatives" Z(i)    = sum_{n in N(i)} exp(s_in)
                   (not even p itself: the decoupled contrastive loss, Yeh
                   et al. 2021; l(i, p) may be > 0, so L may be < 0; an
                   anchor with N(i) empty has no defined loss and is
                   excluded like an anchor without positives)

and L_out(i) = -(tau / base_tau) / W_i * sum_p w_ip l(i, p),
L_in(i) = -(tau / base_tau) * log(1/W_i * sum_p w_ip exp(l(i, p))), with
W_i = sum_p w_ip (|P(i)| for 0/1 weights). "all" without a cap is
eq. 2 / eq. 3 above. `positives_cap = c >= 0` (a multiple of the number of
views V) keeps, per anchor sample s, only the first c / V positive samples
other than s (lowest index in the (gathered) batch, all V views each), then,
in queue order, the first c - V * (batch samples kept) matching queue
entries, so i never has more than c positives besides the other views of s.

Named members of the family (docs/losses.md has their equations and papers):
`positive_weighting="jaccard"` (multi-hot labels weighted by overlap),
`label_kernel="gaussian"` + `kernel_bandwidth` (continuous labels, y-Aware),
`multi_label="per_label"` (MulSupCon: one anchor per (anchor, label) pair,
result `[b, views, labels]`), `denominator="class_balanced"` (BCL: Z(i) =
sum_c 1/|A_c(i)| sum_{a in A_c(i)} exp(s_ia)) and `prototypes` (class
centres in every contrast set, with gradient).

One module per part (every public name is re-exported here, e.g.
`losses.supcon_loss`, `losses.SupConLoss`):

* `api`: `supcon_per_anchor_loss` (argument checks, anchor and contrast
  layout, the choice of form), `reduce_per_anchor`, `supcon_loss` and the
  `SupConLoss` wrapper;
* `weights`: how a pair is weighed (`PairWeighting`: per-row keys and a
  rule; `label_match_weights`, the default rule), shared by every form;
* `dense`: the dense form, `_dense_core` (every option);
* `blockwise`: the general blockwise form, `_blockwise_core` (streams over
  contrast-column blocks with a custom gradient, each block's weights built
  inside the loop), and its cap helpers;
* `blockwise_out`: `_blockwise_out_core`, the blockwise form of the default
  loss with 0/1 weights by label equality (`variant="out"`,
  `denominator="all"`, no cap);
* `config`: `LossConfig`, the loss options as one validated value (the
  model and the run configuration pass it whole);
* `_inputs`: the option names, `PerAnchorLoss`, input checks and validation.
"""

from supcon_tf.losses import api, blockwise, blockwise_out, config, dense, weights
from supcon_tf.losses._inputs import (
    BLOCKWISE_THRESHOLD,
    CONTRAST_MODES,
    DEFAULT_BLOCK_SIZE,
    DENOMINATORS,
    IMPLEMENTATIONS,
    LABEL_KERNELS,
    MULTI_LABEL_MODES,
    POSITIVE_WEIGHTINGS,
    VARIANTS,
    PerAnchorLoss,
)
from supcon_tf.losses.api import SupConLoss, reduce_per_anchor, supcon_loss, supcon_per_anchor_loss
# Private, but named as `losses._blockwise_out_core` in tests/ and benchmarks/RESULTS.md.
from supcon_tf.losses.blockwise_out import _blockwise_out_core  # noqa: F401
from supcon_tf.losses.config import LossConfig
from supcon_tf.losses.weights import gaussian_kernel_weights, jaccard_weights, label_match_weights

__all__ = [
    "BLOCKWISE_THRESHOLD",
    "CONTRAST_MODES",
    "DEFAULT_BLOCK_SIZE",
    "DENOMINATORS",
    "IMPLEMENTATIONS",
    "LABEL_KERNELS",
    "LossConfig",
    "MULTI_LABEL_MODES",
    "POSITIVE_WEIGHTINGS",
    "VARIANTS",
    "PerAnchorLoss",
    "SupConLoss",
    "gaussian_kernel_weights",
    "jaccard_weights",
    "label_match_weights",
    "reduce_per_anchor",
    "supcon_loss",
    "supcon_per_anchor_loss",
]
