// LayerNorm and RMSNorm over the last dimension, forward and backward.
// Rows are independent and run in parallel. Weight/bias gradients are reductions over rows: each
// thread sums its static row range into a private buffer, and the buffers are then added in thread
// order, so the result is bit-identical for a fixed thread count.
#include <omp.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/loop_util.h"
#include "kernels/cpu/parallel.h"
#include "kernels/cpu/simd_math.h"

namespace llm::cpu {

namespace {
using namespace simd;

// Sum over a row of f(lane values); the tail is padded with `fill` chosen so that f(fill) adds 0.
template <typename F>
float row_sum(int64_t C, const float* x, float fill, F f) {
  Vf acc0 = splat(0.0f), acc1 = splat(0.0f);  // two chains hide the add latency
  int64_t c = 0;
  for (; c + 2 * kWidth <= C; c += 2 * kWidth) {
    acc0 = acc0 + f(load(x + c));
    acc1 = acc1 + f(load(x + c + kWidth));
  }
  for (; c + kWidth <= C; c += kWidth) acc0 = acc0 + f(load(x + c));
  if (c < C) acc1 = acc1 + f(load_partial(x + c, C - c, fill));
  return reduce_add(acc0 + acc1);
}

// Runs row_fn(row, partial) over all N rows in parallel; partial is the calling thread's private
// buffer of `width` floats (zeroed). Afterwards out[j] = sum over threads, in thread order, of
// partial[j]. `width` is split into outputs by the caller.
template <typename RowFn>
void rows_reduce(int64_t N, int64_t C, int64_t width, float* out, RowFn row_fn) {
  const int max_threads = N * C >= kParallelMinWork ? num_threads() : 1;
  std::vector<float> partials(size_t(max_threads) * size_t(width), 0.0f);
  int used_threads = 1;
#pragma omp parallel num_threads(max_threads) if (max_threads > 1)
  {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    if (t == 0) used_threads = nt;
    int64_t begin, end;
    split_range(N, nt, t, &begin, &end);
    float* mine = partials.data() + size_t(t) * size_t(width);
    for (int64_t i = begin; i < end; ++i) row_fn(i, mine);
  }
#pragma omp parallel for schedule(static) if (width * used_threads >= kParallelMinWork)
  for (int64_t j = 0; j < width; ++j) {
    float s = partials[size_t(j)];
    for (int t = 1; t < used_threads; ++t) s += partials[size_t(t) * size_t(width) + size_t(j)];
    out[j] = s;
  }
}
}  // namespace

void layernorm_forward(int64_t N, int64_t C, const float* x, const float* w, const float* b, float eps,
                       float* y, float* mean, float* rstd) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
    const float m = row_sum(C, xr, 0.0f, [](Vf v) { return v; }) / float(C);
    const Vf vm = splat(m);
    // Second pass over the row (still in cache) for the variance: no E[x²] - E[x]² cancellation.
    const float var = row_sum(C, xr, m, [vm](Vf v) { return (v - vm) * (v - vm); }) / float(C);
    const float r = float(1.0 / std::sqrt(double(var) + double(eps)));
    const Vf vr = splat(r);
    int64_t c = 0;
    for (; c + kWidth <= C; c += kWidth)
      store(yr + c, fma((load(xr + c) - vm) * vr, load(w + c), load(b + c)));
    if (c < C) {
      const int64_t rem = C - c;
      const Vf out = fma((load_partial(xr + c, rem, 0.0f) - vm) * vr, load_partial(w + c, rem, 0.0f),
                         load_partial(b + c, rem, 0.0f));
      store_partial(yr + c, out, rem);
    }
    mean[i] = m;
    rstd[i] = r;
  }
}

// With xhat = (x - mean) rstd and g = dy w:  dx = rstd (g - mean(g) - xhat mean(g xhat)),
// dw = sum over rows of dy xhat, db = sum over rows of dy.
void layernorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const float* w,
                        const float* mean, const float* rstd, float* dx, float* dw, float* db) {
  std::vector<float> dwdb(size_t(2 * C));
  rows_reduce(N, C, 2 * C, dwdb.data(), [&](int64_t i, float* partial) {
    const float* xr = x + i * C;
    const float* dyr = dy + i * C;
    float* dxr = dx + i * C;
    float* pdw = partial;
    float* pdb = partial + C;
    const Vf vm = splat(mean[i]), vr = splat(rstd[i]);
    Vf sum_g = splat(0.0f), sum_gx = splat(0.0f);
    int64_t c = 0;
    auto accumulate = [&](Vf xv, Vf dyv, Vf wv, Vf* dwv, Vf* dbv) {
      const Vf xhat = (xv - vm) * vr;
      const Vf g = dyv * wv;
      sum_g = sum_g + g;
      sum_gx = fma(g, xhat, sum_gx);
      *dwv = fma(dyv, xhat, *dwv);
      *dbv = *dbv + dyv;
    };
    for (; c + kWidth <= C; c += kWidth) {
      Vf dwv = load(pdw + c), dbv = load(pdb + c);
      accumulate(load(xr + c), load(dyr + c), load(w + c), &dwv, &dbv);
      store(pdw + c, dwv);
      store(pdb + c, dbv);
    }
    const int64_t rem = C - c;
    if (rem > 0) {  // zero-padded dy and w make the padded lanes contribute nothing
      Vf dwv = load_partial(pdw + c, rem, 0.0f), dbv = load_partial(pdb + c, rem, 0.0f);
      accumulate(load_partial(xr + c, rem, 0.0f), load_partial(dyr + c, rem, 0.0f),
                 load_partial(w + c, rem, 0.0f), &dwv, &dbv);
      store_partial(pdw + c, dwv, rem);
      store_partial(pdb + c, dbv, rem);
    }
    const Vf mean_g = splat(reduce_add(sum_g) / float(C));
    const Vf mean_gx = splat(reduce_add(sum_gx) / float(C));
    auto grad = [&](Vf xv, Vf dyv, Vf wv) {
      const Vf xhat = (xv - vm) * vr;
      return vr * (dyv * wv - mean_g - xhat * mean_gx);
    };
    for (c = 0; c + kWidth <= C; c += kWidth) store(dxr + c, grad(load(xr + c), load(dyr + c), load(w + c)));
    if (rem > 0)
      store_partial(dxr + c,
                    grad(load_partial(xr + c, rem, 0.0f), load_partial(dyr + c, rem, 0.0f),
                         load_partial(w + c, rem, 0.0f)),
                    rem);
  });
  for (int64_t c = 0; c < C; ++c) {
    dw[c] = dwdb[size_t(c)];
    db[c] = dwdb[size_t(C + c)];
  }
}

void rmsnorm_forward(int64_t N, int64_t C, const float* x, const float* w, float eps, float* y, float* rstd) {
#pragma omp parallel for schedule(static) if (N * C >= kParallelMinWork)
  for (int64_t i = 0; i < N; ++i) {
    const float* xr = x + i * C;
    float* yr = y + i * C;
    const float ms = row_sum(C, xr, 0.0f, [](Vf v) { return v * v; }) / float(C);
    const float r = float(1.0 / std::sqrt(double(ms) + double(eps)));
    const Vf vr = splat(r);
    int64_t c = 0;
    for (; c + kWidth <= C; c += kWidth) store(yr + c, load(xr + c) * vr * load(w + c));
    if (c < C) {
      const int64_t rem = C - c;
      store_partial(yr + c, load_partial(xr + c, rem, 0.0f) * vr * load_partial(w + c, rem, 0.0f), rem);
    }
    rstd[i] = r;
  }
}

// With g = dy w:  dx = rstd (g - x rstd² mean(g x)),  dw = sum over rows of dy x rstd.
void rmsnorm_backward(int64_t N, int64_t C, const float* dy, const float* x, const float* w,
                      const float* rstd, float* dx, float* dw) {
  rows_reduce(N, C, C, dw, [&](int64_t i, float* pdw) {
    const float* xr = x + i * C;
    const float* dyr = dy + i * C;
    float* dxr = dx + i * C;
    const Vf vr = splat(rstd[i]);
    Vf sum_gx = splat(0.0f);
    int64_t c = 0;
    for (; c + kWidth <= C; c += kWidth) {
      const Vf xv = load(xr + c), dyv = load(dyr + c);
      sum_gx = fma(dyv * load(w + c), xv, sum_gx);
      store(pdw + c, fma(dyv, xv * vr, load(pdw + c)));
    }
    const int64_t rem = C - c;
    if (rem > 0) {
      const Vf xv = load_partial(xr + c, rem, 0.0f), dyv = load_partial(dyr + c, rem, 0.0f);
      sum_gx = fma(dyv * load_partial(w + c, rem, 0.0f), xv, sum_gx);
      store_partial(pdw + c, fma(dyv, xv * vr, load_partial(pdw + c, rem, 0.0f)), rem);
    }
    const float r = rstd[i];
    const Vf coef = splat(r * r * reduce_add(sum_gx) / float(C));
    for (c = 0; c + kWidth <= C; c += kWidth) {
      const Vf xv = load(xr + c);
      store(dxr + c, vr * (load(dyr + c) * load(w + c) - xv * coef));
    }
    if (rem > 0) {
      const Vf xv = load_partial(xr + c, rem, 0.0f);
      store_partial(dxr + c, vr * (load_partial(dyr + c, rem, 0.0f) * load_partial(w + c, rem, 0.0f) - xv * coef),
                    rem);
    }
  });
}

}  // namespace llm::cpu
