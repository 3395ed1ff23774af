// Row softmax and fused cross-entropy (logsumexp + loss, and the in-place-capable gradient).
#include <cmath>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/loop_util.h"
#include "kernels/cpu/simd_math.h"

namespace llm::cpu {

namespace {
using namespace simd;

constexpr float kNegInf = -INFINITY;

float row_max(int64_t C, const float* x) {
  Vf m0 = splat(kNegInf), m1 = splat(kNegInf);
  int64_t c = 0;
  for (; c + 2 * kWidth <= C; c += 2 * kWidth) {
    m0 = max(m0, load(x + c));  // a NaN may be dropped here, but it still poisons the exp sum
    m1 = max(m1, load(x + c + kWidth));
  }
  for (; c + kWidth <= C; c += kWidth) m0 = max(m0, load(x + c));
  if (c < C) m1 = max(m1, load_partial(x + c, C - c, kNegInf));
  return reduce_max(max(m0, m1));
}

// sum over the row of exp(x - m); with `out`, also stores the exponentials there.
float row_exp_sum(int64_t C, const float* x, float m, float* out) {
  const Vf vm = splat(m);
  Vf s0 = splat(0.0f), s1 = splat(0.0f);
  int64_t c = 0;
  for (; c + 2 * kWidth <= C; c += 2 * kWidth) {
    const Vf e0 = exp(load(x + c) - vm), e1 = exp(load(x + c + kWidth) - vm);
    if (out) {
      store(out + c, e0);
      store(out + c + kWidth, e1);
    }
    s0 = s0 + e0;
    s1 = s1 + e1;
  }
  for (; c + kWidth <= C; c += kWidth) {
    const Vf e = exp(load(x + c) - vm);
    if (out) store(out + c, e);
    s0 = s0 + e;
  }
  if (c < C) {
    const Vf e = exp(load_partial(x + c, C - c, kNegInf) - vm);  // padded lanes give exp(-inf) = 0
    if (out) store_partial(out + c, e, C - c);
    s1 = s1 + e;
  }
  return reduce_add(s0 + s1);
}

// logsumexp of a row in one sweep over memory: the row is walked in blocks small enough to stay in
// L1; each block's max is found first, the running sum is rescaled only when the max grows, and then
// the block's exponentials are added (one exp per element, not two as in a per-element online max).
float row_logsumexp(int64_t V, const float* x) {
  constexpr int64_t kBlock = 1024;
  float running_max = kNegInf;
  float running_sum = 0.0f;
  for (int64_t b = 0; b < V; b += kBlock) {
    const int64_t len = V - b < kBlock ? V - b : kBlock;
    const float bm = row_max(len, x + b);
    if (bm > running_max) {
      running_sum *= exp_scalar(running_max - bm);
      running_max = bm;
    }
    if (running_max == kNegInf) continue;  // all -inf so far: the sum is 0, and -inf - -inf is NaN
    running_sum += row_exp_sum(len, x + b, running_max, nullptr);
  }
  return running_max + std::log(running_sum);
}
}  // namespace

void softmax_forward(int64_t N, int64_t C, const float* x, float* y) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
    const float m = row_max(C, xr);
    const Vf inv = splat(1.0f / row_exp_sum(C, xr, m, yr));
    int64_t c = 0;
    for (; c + kWidth <= C; c += kWidth) store(yr + c, load(yr + c) * inv);
    if (c < C) store_partial(yr + c, load_partial(yr + c, C - c, 0.0f) * inv, C - c);
  }
}

// dx = y (dy - sum(y dy)).
void softmax_backward(int64_t N, int64_t C, const float* y, const float* dy, float* dx) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* yr = y + i * C;
    const float* dyr = dy + i * C;
    float* dxr = dx + i * C;
    Vf acc = splat(0.0f);
    int64_t c = 0;
    for (; c + kWidth <= C; c += kWidth) acc = fma(load(yr + c), load(dyr + c), acc);
    const int64_t rem = C - c;
    if (rem > 0) acc = fma(load_partial(yr + c, rem, 0.0f), load_partial(dyr + c, rem, 0.0f), acc);
    const Vf dot = splat(reduce_add(acc));
    for (c = 0; c + kWidth <= C; c += kWidth) store(dxr + c, load(yr + c) * (load(dyr + c) - dot));
    if (rem > 0)
      store_partial(dxr + c, load_partial(yr + c, rem, 0.0f) * (load_partial(dyr + c, rem, 0.0f) - dot), rem);
  }
}

void cross_entropy_forward(int64_t N, int64_t V, const float* logits, const int32_t* targets,
                           int32_t ignore_index, float* losses, float* lse) {
#pragma omp parallel for schedule(static) if (N * V >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* row = logits + i * V;
    const float l = row_logsumexp(V, row);
    lse[i] = l;
    losses[i] = targets[i] == ignore_index ? 0.0f : l - row[targets[i]];
  }
}

void cross_entropy_backward(int64_t N, int64_t V, const float* logits, const int32_t* targets,
                            int32_t ignore_index, const float* lse, const float* dloss, float* dlogits) {
#pragma omp parallel for schedule(static) if (N * V >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    // Each element is read before it is written and the target logit is not needed (its gradient is
    // just p - 1), so dlogits may alias logits.
    const float* row = logits + i * V;
    float* drow = dlogits + i * V;
    const int32_t target = targets[i];
    if (target == ignore_index) {
      for (int64_t c = 0; c < V; ++c) drow[c] = 0.0f;
      continue;
    }
    const Vf vl = splat(lse[i]), vd = splat(dloss[i]);
    int64_t c = 0;
    for (; c + kWidth <= V; c += kWidth) store(drow + c, vd * exp(load(row + c) - vl));
    if (c < V) store_partial(drow + c, vd * exp(load_partial(row + c, V - c, 0.0f) - vl), V - c);
    drow[target] -= dloss[i];
  }
}

}  // namespace llm::cpu
