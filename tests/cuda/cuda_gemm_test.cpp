// kernels/cuda/gemm.h against the CPU kernels (cpu::sgemm, cpu::gelu_forward) on the same
// bf16-rounded inputs, for every backend: the reference kernel (simple), the tensor-core kernels
// (native: mma.sync, and wgmma for NT products on Hopper), cuBLASLt and auto. Each failure names the
// backend, the case and the first wrong element.
#include "kernels/cuda/gemm.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <sstream>

#include "kernels/cpu/fused.h"
#include "kernels/cpu/gemm.h"
#include "tests/cuda/cuda_testing.h"

namespace llm {
namespace {

using cuda::bf16;
using cuda::GemmBackend;
using testing::DeviceBuffer;

constexpr GemmBackend kBackends[] = {GemmBackend::kSimple, GemmBackend::kNative, GemmBackend::kCublas,
                                     GemmBackend::kAuto};
const float kNaN = std::nanf("");

struct Case {
  bool ta = false, tb = false;
  int64_t M = 1, N = 1, K = 1, batch = 1;
  bool c_fp32 = false, bias = false, gelu = false, pre_gelu = false, residual = false;
  bool residual_is_c = false;  // residual points at C itself (x = x + f(x) in place)
  float alpha = 1.f, beta = 0.f;
  bool ld8 = true;                           // lda, ldb rounded up to multiples of 8, as the fast kernel needs
  int64_t pad_a = 0, pad_b = 0, pad_c = 0;  // leading dimensions beyond that
  int64_t gap = 0;                           // between batch items beyond the minimum (multiples of 8 keep
                                             // the batch strides right for the fast kernel)
  bool share_b = false;                      // stride_b = 0: one B for the whole batch
  int64_t offset = 0;                        // A, B, C start this many elements into their allocation
};

int64_t lda_of(const Case& c) {
  const int64_t min = c.ta ? c.M : c.K;
  return (c.ld8 ? (min + 7) / 8 * 8 : min) + c.pad_a;
}
int64_t ldb_of(const Case& c) {
  const int64_t min = c.tb ? c.K : c.N;
  return (c.ld8 ? (min + 7) / 8 * 8 : min) + c.pad_b;
}

std::string describe(const Case& c, GemmBackend backend) {
  std::ostringstream s;
  s << "backend " << cuda::to_string(backend);
  // kNative's NT products have three tensor-core kernels (gemm.h): say which one this run could use.
  if (backend == GemmBackend::kNative && !c.ta && c.tb) {
    const bool wgmma = cuda::gemm_wgmma_enabled() && cuda::gemm_wgmma_available();
    s << (!wgmma ? " (mma.sync kernel)"
                 : cuda::gemm_tma_enabled() && cuda::gemm_tma_available() ? " (wgmma TMA kernel)"
                                                                          : " (wgmma cp.async kernel)");
  }
  s << ", " << (c.ta ? "T" : "N") << (c.tb ? "T" : "N") << ", M " << c.M
    << " N " << c.N << " K " << c.K << ", batch " << c.batch << (c.share_b ? " (shared B)" : "") << ", out "
    << (c.c_fp32 ? "fp32" : "bf16") << ", alpha " << c.alpha << " beta " << c.beta << (c.bias ? ", bias" : "")
    << (c.gelu ? ", gelu" : "") << (c.pre_gelu ? "+pre_gelu" : "") << (c.residual ? ", residual" : "")
    << (c.residual_is_c ? " (= C)" : "") << ", lda " << lda_of(c) << " ldb " << ldb_of(c) << " ldc "
    << c.N + c.pad_c << ", offset " << c.offset;
  return s.str();
}

// A device buffer in C's type (bf16 or fp32), filled from and read back as floats.
class OutBuffer {
 public:
  OutBuffer(bool fp32, const std::vector<float>& init) : fp32_(fp32) {
    if (fp32)
      f_ = std::make_unique<DeviceBuffer<float>>(init);
    else
      h_ = std::make_unique<DeviceBuffer<bf16>>(testing::to_bf16(init));
  }
  void* at(int64_t offset) const {
    return fp32_ ? static_cast<void*>(f_->get() + offset) : static_cast<void*>(h_->get() + offset);
  }
  std::vector<float> download() const { return fp32_ ? f_->download() : testing::to_float(h_->download()); }

 private:
  bool fp32_;
  std::unique_ptr<DeviceBuffer<float>> f_;
  std::unique_ptr<DeviceBuffer<bf16>> h_;
};

// Values as C's type holds them.
std::vector<float> as_out(bool fp32, std::vector<float> v) { return fp32 ? v : testing::round_bf16(v); }

bool same(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }

// Compares got with want over C's region of every batch item; outside it, the buffer must be as it was.
void expect_matches(const Case& c, GemmBackend backend, const char* what, const std::vector<float>& got,
                    const std::vector<float>& want, int64_t ldc, int64_t stride_c, double tol) {
  std::vector<float> got_region, want_region;
  std::vector<int64_t> where;
  std::vector<bool> inside(got.size(), false);
  for (int64_t z = 0; z < c.batch; ++z)
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        const int64_t i = c.offset + z * stride_c + m * ldc + n;
        inside[i] = true;
        got_region.push_back(got[i]), want_region.push_back(want[i]), where.push_back(i);
      }
  const double err = testing::max_rel_error(got_region, want_region);
  if (err > tol) {
    double scale = 1e-6;
    for (float w : want_region) scale = std::max(scale, std::fabs(double(w)));
    std::ostringstream first;
    for (size_t k = 0; k < got_region.size(); ++k)
      if (!(std::fabs(double(got_region[k]) - want_region[k]) <= tol * scale)) {
        const int64_t i = where[k] - c.offset;
        first << "first wrong element: batch " << i / stride_c << ", row " << (i % stride_c) / ldc << ", column "
              << (i % stride_c) % ldc << ": got " << got_region[k] << ", want " << want_region[k];
        break;
      }
    ADD_FAILURE() << what << " of " << describe(c, backend) << ": max relative error " << err << " > " << tol
                  << "; " << first.str();
  }
  for (size_t i = 0; i < got.size(); ++i)
    if (!inside[i] && !same(got[i], want[i])) {
      ADD_FAILURE() << what << " of " << describe(c, backend) << ": element " << i
                    << " outside the output was changed (got " << got[i] << ", was " << want[i] << ")";
      break;
    }
}

void check_case(const Case& c, GemmBackend backend, uint64_t seed = 1) {
  const int64_t lda = lda_of(c), ldb = ldb_of(c), ldc = c.N + c.pad_c;
  const int64_t stride_a = (c.ta ? c.K : c.M) * lda + c.gap, stride_c = c.M * ldc + c.gap;
  const int64_t stride_b = c.share_b ? 0 : (c.tb ? c.N : c.K) * ldb + c.gap;
  const int64_t size_a = c.offset + (c.batch - 1) * stride_a + (c.ta ? c.K : c.M) * lda;
  const int64_t size_b = c.offset + (c.batch - 1) * stride_b + (c.tb ? c.N : c.K) * ldb;
  const int64_t size_c = c.offset + (c.batch - 1) * stride_c + c.M * ldc;

  const auto a = testing::round_bf16(testing::random_floats(size_a, seed));
  const auto b = testing::round_bf16(testing::random_floats(size_b, seed + 1));
  const auto bias = testing::random_floats(c.N, seed + 2);
  // C's initial contents: real data when it is read (beta ≠ 0, or it is the residual), NaN otherwise.
  const bool c_read = c.beta != 0.f || c.residual_is_c;
  const auto c_old = c_read ? as_out(c.c_fp32, testing::random_floats(size_c, seed + 3)) : std::vector<float>(size_c, kNaN);
  const auto residual = c.residual_is_c ? c_old : as_out(c.c_fp32, testing::random_floats(size_c, seed + 4));

  DeviceBuffer<bf16> d_a(testing::to_bf16(a)), d_b(testing::to_bf16(b));
  DeviceBuffer<float> d_bias(bias);
  OutBuffer d_c(c.c_fp32, c_old), d_pre(c.c_fp32, std::vector<float>(size_c, kNaN));
  OutBuffer d_residual(c.c_fp32, residual);

  cuda::Gemm g;
  g.trans_a = c.ta, g.trans_b = c.tb, g.M = c.M, g.N = c.N, g.K = c.K;
  g.A = d_a.get() + c.offset, g.lda = lda, g.B = d_b.get() + c.offset, g.ldb = ldb;
  g.C = d_c.at(c.offset), g.ldc = ldc, g.c_fp32 = c.c_fp32, g.alpha = c.alpha, g.beta = c.beta;
  g.bias = c.bias ? d_bias.get() : nullptr, g.gelu = c.gelu;
  g.pre_gelu = c.pre_gelu ? d_pre.at(c.offset) : nullptr;
  g.residual = c.residual_is_c ? g.C : c.residual ? d_residual.at(c.offset) : nullptr;
  g.batch = c.batch, g.stride_a = stride_a, g.stride_b = stride_b, g.stride_c = stride_c;
  cuda::gemm(g, backend, nullptr);
  const auto got_c = d_c.download(), got_pre = d_pre.download();

  // The reference: cpu::sgemm (product + bias), cpu::gelu_forward, then beta·C_old and residual.
  std::vector<float> want_c = c_old, want_pre(size_c, kNaN), product(c.M * c.N), activated(c.M * c.N);
  for (int64_t z = 0; z < c.batch; ++z) {
    cpu::sgemm(c.ta, c.tb, c.M, c.N, c.K, c.alpha, a.data() + c.offset + z * stride_a, lda,
               b.data() + c.offset + z * stride_b, ldb, 0.f, product.data(), c.N, c.bias ? bias.data() : nullptr);
    activated = product;
    if (c.gelu) cpu::gelu_forward(c.M * c.N, product.data(), activated.data());
    for (int64_t m = 0; m < c.M; ++m)
      for (int64_t n = 0; n < c.N; ++n) {
        const int64_t i = c.offset + z * stride_c + m * ldc + n;
        float v = activated[m * c.N + n];
        if (c.beta != 0.f) v += c.beta * c_old[i];
        if (c.residual || c.residual_is_c) v += residual[i];
        want_c[i] = v;
        want_pre[i] = product[m * c.N + n];
      }
  }
  // bf16 outputs: bf16 rounding. fp32 outputs: tensor-core accumulation order over K (≤ 3072 here),
  // and cuBLASLt's own GELU (a fast tanh) where it applies one.
  const bool lt_gelu = c.gelu && (backend == GemmBackend::kCublas || backend == GemmBackend::kAuto);
  const double tol = !c.c_fp32 ? 1e-2 : lt_gelu ? 1e-3 : 1e-4;
  expect_matches(c, backend, "C", got_c, want_c, ldc, stride_c, tol);
  if (c.gelu && c.pre_gelu) expect_matches(c, backend, "pre_gelu", got_pre, want_pre, ldc, stride_c, tol);
}

void check_all_backends(const Case& c) {
  for (GemmBackend backend : kBackends) check_case(c, backend);
}

TEST(CudaGemm, AllTransposesAtAwkwardSizes) {
  LLM_SKIP_WITHOUT_GPU();
  const int64_t sizes[][3] = {{1, 1, 1},     {3, 5, 7},     {17, 33, 9},    {128, 128, 128},
                              {127, 129, 257}, {257, 127, 129}, {129, 257, 40}, {200, 300, 8}};
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (const auto& s : sizes)
        for (bool fp32 : {false, true})
          for (bool ld8 : {true, false}) {  // the tensor-core kernel, then (mostly) its fallback
            Case c;
            c.ta = ta, c.tb = tb, c.M = s[0], c.N = s[1], c.K = s[2], c.c_fp32 = fp32, c.ld8 = ld8;
            check_all_backends(c);
          }
}

// The GPT-2 layer products at a reduced token count with dimensions off the tile grid: forward
// x·Wᵀ with bias (NT), dX = dY·W (NN), dW += dYᵀ·X accumulated in fp32 (TN, beta 1).
TEST(CudaGemm, TrainingShapes) {
  LLM_SKIP_WITHOUT_GPU();
  Case fwd;
  fwd.tb = true, fwd.M = 1000, fwd.N = 770, fwd.K = 3072, fwd.bias = true;
  check_all_backends(fwd);
  Case dx;
  dx.M = 1000, dx.N = 3000, dx.K = 768;
  check_all_backends(dx);
  Case dw;
  dw.ta = true, dw.M = 776, dw.N = 3000, dw.K = 1000, dw.c_fp32 = true, dw.beta = 1.f;
  check_all_backends(dw);
  Case fc;  // fc with gelu, keeping its input for the backward pass
  fc.tb = true, fc.M = 999, fc.N = 3072, fc.K = 768, fc.bias = true, fc.gelu = true, fc.pre_gelu = true;
  check_all_backends(fc);
}

TEST(CudaGemm, BatchedWithStrides) {
  LLM_SKIP_WITHOUT_GPU();
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (bool share_b : {false, true}) {
        Case c;
        c.ta = ta, c.tb = tb, c.M = 65, c.N = 136, c.K = 72, c.batch = 3, c.gap = 24, c.share_b = share_b;
        c.bias = true, c.residual = true;
        check_all_backends(c);
      }
  Case attn;  // attention-like: 12 heads of (T×64)·(64×T)ᵀ, fp32 scores
  attn.tb = true, attn.M = 100, attn.N = 100, attn.K = 64, attn.batch = 12, attn.c_fp32 = true, attn.alpha = 0.125f;
  check_all_backends(attn);
}

TEST(CudaGemm, EveryEpilogue) {
  LLM_SKIP_WITHOUT_GPU();
  for (bool fp32 : {false, true}) {
    std::vector<Case> cases(11);
    cases[0].bias = true;
    cases[1].bias = true, cases[1].gelu = true, cases[1].pre_gelu = true;
    cases[2].gelu = true;                                             // no bias, no pre_gelu
    cases[3].gelu = true, cases[3].pre_gelu = true;                   // no bias
    cases[4].beta = 1.f;                                              // accumulate
    cases[5].beta = 0.5f, cases[5].alpha = -2.f, cases[5].bias = true;
    cases[6].residual = true;
    cases[7].residual = true, cases[7].beta = 0.75f, cases[7].bias = true;
    cases[8].gelu = true, cases[8].bias = true, cases[8].residual = true;
    cases[9].gelu = true, cases[9].bias = true, cases[9].pre_gelu = true, cases[9].beta = 1.f;
    cases[10].residual_is_c = true, cases[10].bias = true;
    for (Case c : cases) {
      c.tb = true, c.M = 129, c.N = 264, c.K = 100, c.c_fp32 = fp32;
      check_all_backends(c);
      c.tb = false, c.ta = true, c.M = 64, c.N = 31, c.K = 19;  // ldc 31: no vector stores, no GELU_AUX
      check_all_backends(c);
    }
  }
}

struct RestoreGemmSwitches {
  bool wgmma = cuda::gemm_wgmma_enabled(), tma = cuda::gemm_tma_enabled();
  ~RestoreGemmSwitches() {
    cuda::set_gemm_wgmma(wgmma);
    cuda::set_gemm_tma(tma);
  }
};

// kNative's NT products (x·Wᵀ) through each of its tensor-core kernels against the CPU: Hopper's wgmma
// kernel with TMA loads, the same with cp.async loads (these two are skipped, saying so, where they
// cannot run) and the mma.sync kernel. Sizes off the 128×256×64 tile grid, K below 64, batches (a
// shared B among them), every epilogue.
TEST(CudaGemm, NativeNtOnEveryKernel) {
  LLM_SKIP_WITHOUT_GPU();
  RestoreGemmSwitches restore;
  std::vector<Case> cases;
  const int64_t sizes[][3] = {{1, 1, 1},       {3, 5, 7},       {17, 33, 9},    {64, 64, 64},   {128, 256, 64},
                              {127, 129, 257}, {129, 257, 65},  {200, 300, 8},  {257, 520, 200}, {1000, 770, 3072}};
  for (const auto& s : sizes)
    for (bool fp32 : {false, true}) {
      if (fp32 && s[2] > 1024) continue;  // fp32 at 1e-4: K as in the other tests, the order of sums differs
      Case c;
      c.tb = true, c.M = s[0], c.N = s[1], c.K = s[2], c.c_fp32 = fp32;
      cases.push_back(c);
    }
  for (bool share_b : {false, true}) {
    Case c;
    c.tb = true, c.M = 65, c.N = 136, c.K = 72, c.batch = 3, c.gap = 24, c.share_b = share_b, c.bias = true;
    c.residual = true;
    cases.push_back(c);
  }
  Case attn;  // 12 heads of (T×64)·(64×T)ᵀ, fp32 scores
  attn.tb = true, attn.M = 100, attn.N = 100, attn.K = 64, attn.batch = 12, attn.c_fp32 = true, attn.alpha = 0.125f;
  cases.push_back(attn);
  for (bool fp32 : {false, true}) {
    std::vector<Case> epilogues(11);
    epilogues[0].bias = true;
    epilogues[1].bias = true, epilogues[1].gelu = true, epilogues[1].pre_gelu = true;
    epilogues[2].gelu = true;
    epilogues[3].gelu = true, epilogues[3].pre_gelu = true;
    epilogues[4].beta = 1.f;
    epilogues[5].beta = 0.5f, epilogues[5].alpha = -2.f, epilogues[5].bias = true;
    epilogues[6].residual = true;
    epilogues[7].residual = true, epilogues[7].beta = 0.75f, epilogues[7].bias = true;
    epilogues[8].gelu = true, epilogues[8].bias = true, epilogues[8].residual = true;
    epilogues[9].gelu = true, epilogues[9].bias = true, epilogues[9].pre_gelu = true, epilogues[9].beta = 1.f;
    epilogues[10].residual_is_c = true, epilogues[10].bias = true;
    for (Case c : epilogues) {
      c.tb = true, c.M = 129, c.N = 264, c.K = 100, c.c_fp32 = fp32;
      cases.push_back(c);
      c.pad_c = 1;  // odd ldc: the epilogue's scalar stores
      cases.push_back(c);
    }
  }
  struct Kernel {
    bool wgmma, tma;
    const char* name;
  };
  for (const Kernel k : {Kernel{true, true, "wgmma TMA"}, Kernel{true, false, "wgmma cp.async"},
                         Kernel{false, false, "mma.sync"}}) {
    if (k.wgmma && !cuda::gemm_wgmma_available()) {
      std::printf("[ SKIPPED  ] the %s kernel's part of CudaGemm.NativeNtOnEveryKernel: not compiled in (CUDA "
                  "architectures without 90a), the device is not compute capability 9.0, or LLM_CUDA_EXCLUDE names "
                  "it\n", k.name);
      continue;
    }
    if (k.tma && !cuda::gemm_tma_available()) {
      std::printf("[ SKIPPED  ] the wgmma TMA kernel's part of CudaGemm.NativeNtOnEveryKernel: the driver offers no "
                  "cuTensorMapEncodeTiled or LLM_CUDA_EXCLUDE names it\n");
      continue;
    }
    cuda::set_gemm_wgmma(k.wgmma);
    cuda::set_gemm_tma(k.tma);
    for (const Case& c : cases) check_case(c, GemmBackend::kNative);
    if (k.tma && !cuda::gemm_tma_enabled())
      ADD_FAILURE() << "the wgmma TMA kernel failed its self-check (see its stderr line): the products above ran on "
                    << "the cp.async kernel";
  }
}

// The TMA kernel's self-check (gemm.h) passes: the switch is still on after the first TMA product.
TEST(CudaGemm, WgmmaTmaPassesItsSelfCheck) {
  LLM_SKIP_WITHOUT_GPU();
  if (!cuda::gemm_tma_available())
    GTEST_SKIP() << "the wgmma kernel is not compiled in (CUDA architectures without 90a), the device is not "
                    "compute capability 9.0, the driver offers no cuTensorMapEncodeTiled, or LLM_CUDA_EXCLUDE names it";
  if (!cuda::gemm_wgmma_enabled() || !cuda::gemm_tma_enabled())
    GTEST_SKIP() << "LLM_CUDA_WGMMA=0 or LLM_CUDA_TMA=0 turned the kernel off";
  Case c;
  c.tb = true, c.M = 300, c.N = 520, c.K = 200;
  check_case(c, GemmBackend::kNative);
  EXPECT_TRUE(cuda::gemm_tma_enabled())
      << "the wgmma TMA kernel failed its self-check against the mma.sync kernel and turned itself off (its stderr "
      << "line says how far off it was)";
}

// Operands the tensor-core kernel cannot load with 16-byte copies run on the reference kernel.
TEST(CudaGemm, UnalignedOperandsFallBack) {
  LLM_SKIP_WITHOUT_GPU();
  Case odd_ld;
  odd_ld.M = 70, odd_ld.N = 90, odd_ld.K = 45, odd_ld.ld8 = false, odd_ld.pad_a = 1, odd_ld.pad_b = 3, odd_ld.pad_c = 1;
  Case misaligned;
  misaligned.M = 70, misaligned.N = 96, misaligned.K = 48, misaligned.offset = 1;
  for (Case c : {odd_ld, misaligned})
    for (bool tb : {false, true}) {
      c.tb = tb, c.bias = true, c.residual = true;
      check_all_backends(c);
      c.c_fp32 = true;
      check_all_backends(c);
    }
}

TEST(CudaGemm, AutoSettlesOnAConcreteBackendOnce) {
  LLM_SKIP_WITHOUT_GPU();
  DeviceBuffer<bf16> a(testing::to_bf16(testing::random_floats(256 * 512, 5)));
  DeviceBuffer<bf16> b(testing::to_bf16(testing::random_floats(512 * 384, 6)));
  DeviceBuffer<bf16> c(256 * 384);
  cuda::Gemm g;
  g.M = 256, g.N = 384, g.K = 512, g.A = a.get(), g.lda = 512, g.B = b.get(), g.ldb = 384, g.C = c.get(), g.ldc = 384;
  const GemmBackend first = cuda::gemm_auto_choice(g, nullptr);
  EXPECT_TRUE(first == GemmBackend::kNative || first == GemmBackend::kCublas) << cuda::to_string(first);
  EXPECT_EQ(cuda::gemm_auto_choice(g, nullptr), first);
}

TEST(CudaGemm, BadArgumentsThrow) {
  LLM_SKIP_WITHOUT_GPU();
  DeviceBuffer<bf16> buf(64);
  cuda::Gemm g;
  g.M = 4, g.N = 4, g.K = 4, g.A = buf.get(), g.lda = 4, g.B = buf.get(), g.ldb = 4, g.C = buf.get(), g.ldc = 4;
  cuda::Gemm zero = g;
  zero.K = 0;
  EXPECT_THROW(cuda::gemm(zero, GemmBackend::kNative, nullptr), std::runtime_error);
  cuda::Gemm small_lda = g;
  small_lda.lda = 3;
  EXPECT_THROW(cuda::gemm(small_lda, GemmBackend::kCublas, nullptr), std::runtime_error);
  EXPECT_THROW(cuda::bias_grad(4, 4, buf.get(), 3, nullptr, false, nullptr), std::runtime_error);
}

// ---- bias_grad -------------------------------------------------------------------------------

TEST(CudaBiasGrad, ColumnSumsAreRightAndDeterministic) {
  LLM_SKIP_WITHOUT_GPU();
  const int64_t shapes[][3] = {{1, 1, 1}, {3, 17, 17}, {257, 129, 136}, {1000, 768, 768}, {4097, 50, 64}};
  for (const auto& s : shapes)
    for (bool accumulate : {false, true}) {
      const int64_t M = s[0], N = s[1], ldy = s[2];
      const auto dy = testing::round_bf16(testing::random_floats(M * ldy, 7));
      const auto db0 = testing::random_floats(N, 8);
      DeviceBuffer<bf16> d_dy(testing::to_bf16(dy));
      DeviceBuffer<float> d_db(accumulate ? db0 : std::vector<float>(N, kNaN));
      cuda::bias_grad(M, N, d_dy.get(), ldy, d_db.get(), accumulate, nullptr);
      const auto got = d_db.download();
      std::vector<double> want(N);
      for (int64_t n = 0; n < N; ++n) {
        double sum = accumulate ? db0[n] : 0.0;
        for (int64_t m = 0; m < M; ++m) sum += dy[m * ldy + n];
        want[n] = sum;
      }
      const double err = testing::max_rel_error(got, want);
      EXPECT_LE(err, 1e-5) << "bias_grad M " << M << " N " << N << " ldy " << ldy << " accumulate " << accumulate
                           << ": max relative error " << err << "; db[0] got " << got[0] << " want " << want[0];

      if (!accumulate) {  // a second run gives the same bits
        cuda::bias_grad(M, N, d_dy.get(), ldy, d_db.get(), false, nullptr);
        const auto again = d_db.download();
        EXPECT_EQ(0, std::memcmp(again.data(), got.data(), got.size() * sizeof(float)))
            << "bias_grad M " << M << " N " << N << " is not deterministic";
      }
    }
}

}  // namespace
}  // namespace llm
