// Finite-difference gradient checks for ops (f32 tensors; differences taken in double from a
// double-accumulated loss). The kernels' own backward formulas are checked in double against finite
// differences of double references in tests/kernels; this checks the autograd wiring on top.
#pragma once
#include <functional>
#include <vector>

#include "engine/core/tensor.h"
#include "tests/common/testing.h"

namespace llm::testing {

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

// loss = sum(f(inputs) ⊙ R) for a fixed random R. Compares the analytic gradient of every input that
// requires grad with central differences (step eps) of the loss; returns the worst relative error
// (max |analytic - numeric| / max |numeric|), and records failures with the input index.
double gradcheck(const OpFn& f, const std::vector<Tensor>& inputs, double eps = 1e-2, uint64_t seed = 7);

// Random f32 tensor of the given shape in [lo, hi), requiring grad.
Tensor param(const Shape& shape, uint64_t seed, float lo = -1.f, float hi = 1.f);

}  // namespace llm::testing
