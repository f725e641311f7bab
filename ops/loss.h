// Log-softmax and cross-entropy for classification.
#pragma once

#include <cstdint>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

// log(softmax(x)) along `dim`, computed stably (max subtracted).
Tensor log_softmax(const Tensor& x, std::int64_t dim = -1);

// Mean over the batch of -sum_k q_k log softmax(logits)_k with
// q = (1 - label_smoothing) * onehot(target) + label_smoothing / K.
//   logits (N, K) float, targets (N) int64 in [0, K)  ->  scalar
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, double label_smoothing = 0.0);

}  // namespace vidgrad
