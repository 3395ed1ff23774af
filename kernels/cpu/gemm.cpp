// BLIS-style sgemm: op(A) and op(B) are packed into contiguous, zero-padded panels (packing absorbs
// the transposes, so every variant runs the same micro-kernel), blocked for the caches, and swept by
// a register-tiled micro-kernel. Threads own disjoint rectangles of C and never split K, so every
// element of C sees the same sequence of operations whatever the thread count.
#include "kernels/cpu/gemm.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/gemm_microkernel.h"
#include "kernels/cpu/parallel.h"

namespace llm::cpu {

namespace {

using gemm_detail::kMR;
using gemm_detail::kNR;

// Cache blocking (Zen 4/5: 32-48 KiB L1d, 1 MiB L2 per core, shared L3). The micro-kernel sweeps the
// packed MC×KC block of A (≈384 KiB, in L2) past one KC×NR panel of B (24 KiB, in L1); the KC×NC
// block of B (≈512 KiB) is reused for every MC block. KC = 128 measured better than 192/256 here:
// a 256-deep B panel would fill L1, and the extra passes over C are cheap with C prefetched.
constexpr int64_t kKC = 128;
constexpr int64_t kNC = kNR * ((512 * 1024 / 4 / kKC) / kNR);
constexpr int64_t kMC = kMR * ((384 * 1024 / 4 / kKC) / kMR);

// Per-thread packing buffer that only grows, so steady-state calls never allocate.
class PackBuffer {
 public:
  ~PackBuffer() { std::free(data_); }
  float* get(size_t floats) {
    if (floats > capacity_) {
      std::free(data_);
      capacity_ = (floats + 1023) & ~size_t(1023);
      data_ = static_cast<float*>(std::aligned_alloc(64, capacity_ * sizeof(float)));
      if (!data_) std::abort();
    }
    return data_;
  }

 private:
  float* data_ = nullptr;
  size_t capacity_ = 0;
};

PackBuffer& pack_buffer_a() {
  static thread_local PackBuffer buffer;
  return buffer;
}
PackBuffer& pack_buffer_b() {
  static thread_local PackBuffer buffer;
  return buffer;
}

struct Operands {
  bool trans_a, trans_b;
  int64_t K;
  float alpha;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  float beta;
  float* C;
  int64_t ldc;
  const float* bias;
};

// Pack rows [i0, i0+m) × k-range [k0, k0+kc) of op(A) into MR-row slivers laid out [k][MR].
void pack_a(const Operands& op, int64_t i0, int64_t m, int64_t k0, int64_t kc, float* out) {
  for (int64_t i = 0; i < m; i += kMR) {
    const int64_t rows = std::min<int64_t>(kMR, m - i);
    float* sliver = out + i * kc;
    if (op.trans_a)  // stored K×M: each k is a contiguous run of rows
      gemm_detail::pack_copy<kMR>(op.A + k0 * op.lda + (i0 + i), op.lda, rows, kc, sliver);
    else
      gemm_detail::pack_transpose(op.A + (i0 + i) * op.lda + k0, op.lda, rows, kc, kMR, sliver);
  }
}

// Pack k-range [k0, k0+kc) × columns [j0, j0+n) of op(B) into NR-column panels laid out [k][NR].
void pack_b(const Operands& op, int64_t j0, int64_t n, int64_t k0, int64_t kc, float* out) {
  for (int64_t j = 0; j < n; j += kNR) {
    const int64_t cols = std::min<int64_t>(kNR, n - j);
    float* panel = out + j * kc;
    if (op.trans_b)  // stored N×K: each column of op(B) is a contiguous row
      gemm_detail::pack_transpose(op.B + (j0 + j) * op.ldb + k0, op.ldb, cols, kc, kNR, panel);
    else
      gemm_detail::pack_copy<kNR>(op.B + k0 * op.ldb + (j0 + j), op.ldb, cols, kc, panel);
  }
}

// One thread computes the rectangle C[i0:i1, j0:j1] completely (all of K), single-threaded.
void gemm_rectangle(const Operands& op, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  if (i1 <= i0 || j1 <= j0) return;
  const int64_t kc_max = std::min(kKC, op.K);
  const int64_t mc_max = std::min(kMC, (i1 - i0 + kMR - 1) / kMR * kMR);
  const int64_t nc_max = std::min(kNC, (j1 - j0 + kNR - 1) / kNR * kNR);
  float* packed_a = pack_buffer_a().get(size_t(mc_max * kc_max));
  float* packed_b = pack_buffer_b().get(size_t(nc_max * kc_max));

  for (int64_t jc = j0; jc < j1; jc += kNC) {
    const int64_t nc = std::min(kNC, j1 - jc);
    for (int64_t pc = 0; pc < op.K; pc += kKC) {
      const int64_t kc = std::min(kKC, op.K - pc);
      const bool first = pc == 0, last = pc + kc == op.K;
      // Later K blocks accumulate onto what the earlier ones wrote.
      const float beta = first ? op.beta : 1.f;
      const float* bias = last ? op.bias : nullptr;
      pack_b(op, jc, nc, pc, kc, packed_b);
      for (int64_t ic = i0; ic < i1; ic += kMC) {
        const int64_t mc = std::min(kMC, i1 - ic);
        pack_a(op, ic, mc, pc, kc, packed_a);
        // One KC×NR panel of B stays in L1 while the MC×KC block of A streams past it from L2.
        for (int64_t jr = 0; jr < nc; jr += kNR) {
          const int cols = int(std::min<int64_t>(kNR, nc - jr));
          const float* b_panel = packed_b + jr * kc;
          for (int64_t ir = 0; ir < mc; ir += kMR) {
            const int rows = int(std::min<int64_t>(kMR, mc - ir));
            float* c_tile = op.C + (ic + ir) * op.ldc + (jc + jr);
            gemm_detail::micro_kernel(kc, packed_a + ir * kc, b_panel, c_tile, op.ldc, rows, cols, op.alpha, beta,
                                      bias ? bias + jc + jr : nullptr);
          }
        }
      }
    }
  }
}

// C = beta·C (+ bias) when the product is empty (K == 0) or alpha == 0: A and B are not read.
void scale_only(const Operands& op, int64_t M, int64_t N) {
  for (int64_t i = 0; i < M; ++i) {
    float* row = op.C + i * op.ldc;
    for (int64_t j = 0; j < N; ++j) {
      float v = op.beta == 0.f ? 0.f : op.beta * row[j];
      if (op.bias) v += op.bias[j];
      row[j] = v;
    }
  }
}

// Split C into a tm × tn grid of rectangles (tm·tn = threads). Splitting N makes every thread pack
// all of A (M·K extra), splitting M makes every thread pack all of B (K·N extra); pick the grid with
// the smallest largest piece plus duplicated packing, in micro-tile units so no rectangle is ragged.
void choose_grid(int64_t M, int64_t N, int64_t K, int threads, int* tm_out, int* tn_out) {
  const int64_t m_tiles = (M + kMR - 1) / kMR, n_tiles = (N + kNR - 1) / kNR;
  double best = -1;
  for (int tm = 1; tm <= threads; ++tm) {
    if (threads % tm) continue;
    const int tn = threads / tm;
    if (tm > m_tiles || tn > n_tiles) continue;
    const double piece_m = double((m_tiles + tm - 1) / tm) * kMR, piece_n = double((n_tiles + tn - 1) / tn) * kNR;
    const double compute = piece_m * piece_n * double(K);
    // Packing moves an element at a few elements per cycle; a micro-tile FMA does 16 per cycle.
    const double packing = 8.0 * (piece_m * double(K) + piece_n * double(K));
    const double cost = compute + packing;
    if (best < 0 || cost < best) {
      best = cost;
      *tm_out = tm;
      *tn_out = tn;
    }
  }
  if (best < 0) *tm_out = *tn_out = 1;
}

// A few rows against a weight matrix stored N×K (x·Wᵀ: decoding one token per sequence). Packing
// would copy all of W to use it once, so each output is a dot product straight from W's rows: one
// pass over the weights, which is what bounds decoding. Every output is one fixed-order dot product,
// so the split over N cannot change results.
constexpr int64_t kSkinnyRows = 4;

void skinny_nt(const Operands& op, int64_t M, int64_t N, int threads) {
  const int64_t K = op.K;
  auto columns = [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      const float* w = op.B + j * op.ldb;
      for (int64_t i = 0; i < M; ++i) {
        const float* x = op.A + i * op.lda;
        float dot = 0.f;
#pragma omp simd reduction(+ : dot)
        for (int64_t k = 0; k < K; ++k) dot += x[k] * w[k];
        float* c = op.C + i * op.ldc + j;
        float v = op.alpha * dot;
        if (op.beta != 0.f) v += op.beta * *c;
        if (op.bias) v += op.bias[j];
        *c = v;
      }
    }
  };
  // Below ~256 KiB of weights the fork/join costs more than the streaming saves.
  parallel_ranges(N, int(std::max<int64_t>(1, std::min<int64_t>(threads, N * K / 65536))), columns);
}

// Runs one product, using up to `threads` threads (1 when called inside a parallel region).
void gemm_one(const Operands& op, int64_t M, int64_t N, int threads) {
  if (M <= 0 || N <= 0) return;
  if (op.K == 0 || op.alpha == 0.f) {
    scale_only(op, M, N);
    return;
  }
  if (M <= kSkinnyRows && op.trans_b && !op.trans_a) {
    skinny_nt(op, M, N, threads);
    return;
  }
  // Below ~1 MFLOP per thread the fork/join costs more than the work saves.
  const double flops = 2.0 * double(M) * double(N) * double(op.K);
  threads = int(std::max<int64_t>(1, std::min<int64_t>(threads, int64_t(flops / 1.0e6))));
  int tm = 1, tn = 1;
  choose_grid(M, N, op.K, threads, &tm, &tn);
  if (tm * tn == 1) {
    gemm_rectangle(op, 0, M, 0, N);
    return;
  }
  const int64_t m_tiles = (M + kMR - 1) / kMR, n_tiles = (N + kNR - 1) / kNR;
#pragma omp parallel num_threads(tm * tn)
  {
    const int t = omp_get_thread_num();
    int64_t mb, me, nb, ne;
    split_range(m_tiles, tm, t / tn, &mb, &me);
    split_range(n_tiles, tn, t % tn, &nb, &ne);
    gemm_rectangle(op, mb * kMR, std::min(M, me * kMR), nb * kNR, std::min(N, ne * kNR));
  }
}

}  // namespace

void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc, const float* bias) {
  const Operands op{trans_a, trans_b, K, alpha, A, lda, B, ldb, beta, C, ldc, bias};
  gemm_one(op, M, N, omp_in_parallel() ? 1 : num_threads());
}

void sgemm_batched(int64_t batch, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, int64_t stride_a, const float* B, int64_t ldb, int64_t stride_b,
                   float beta, float* C, int64_t ldc, int64_t stride_c) {
  if (batch <= 0) return;
  const int threads = omp_in_parallel() ? 1 : num_threads();
  auto product = [&](int64_t b, int product_threads) {
    const Operands op{trans_a, trans_b, K, alpha, A + b * stride_a, lda, B + b * stride_b, ldb,
                      beta, C + b * stride_c, ldc, nullptr};
    gemm_one(op, M, N, product_threads);
  };
  // Many products: one thread per product (no fork per product). Few: each product uses all threads.
  if (batch >= threads && threads > 1) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t b = 0; b < batch; ++b) product(b, 1);
  } else {
    for (int64_t b = 0; b < batch; ++b) product(b, threads);
  }
}

const char* sgemm_isa() { return gemm_detail::kIsaName; }

}  // namespace llm::cpu
