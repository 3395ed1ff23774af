// The GPU attention kernels against the CPU kernels (kernels/cpu/attention.h) on the same bf16-rounded
// inputs: forward (out, lse) and backward (dq, dk, dv), both implementations (the simple one for any
// even D, the tensor-core one for D = 64, 128), and the two against each other. Every shape runs with
// grouped-query heads (Hkv = 4, 2, 1), packed documents, sliding windows and both together, at
// sequence lengths around the 64-wide tiles.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cuda/attention.h"
#include "tests/cuda/cuda_testing.h"

namespace llm {
namespace {

using cuda::AttentionKernel;
using cuda::bf16;
using testing::DeviceBuffer;

constexpr double kBf16Tol = 1e-2;
// lse is fp32 but computed from the same bf16 inputs in another order (and with exp2 on the GPU).
constexpr double kLseTol = 1e-4;

struct Mask {
  bool docs;
  int64_t window;
};
const Mask kMasks[] = {{false, 0}, {true, 0}, {false, 5}, {false, 64}, {true, 64}};

std::string describe(AttentionKernel kernel, const cpu::AttentionShape& s, const Mask& m) {
  std::ostringstream os;
  os << cuda::to_string(kernel) << " kernel, B=" << s.B << " T=" << s.T << " Hq=" << s.Hq << " Hkv=" << s.Hkv
     << " D=" << s.D << " window=" << s.window << (m.docs ? " with documents" : "");
  return os.str();
}

// Several documents per row, ids that come back after another id (a new document each time), and
// runs that begin in the middle of a 64-wide tile.
std::vector<int32_t> make_docs(int64_t B, int64_t T) {
  const std::vector<std::vector<int64_t>> starts = {{3, 70, 71, 150, 200}, {40, 128, 129, 250}};
  std::vector<int32_t> doc(B * T);
  for (int64_t b = 0; b < B; ++b) {
    int32_t id = 7;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t s : starts[b % 2])
        if (t == s) id = id == 7 ? 9 : 7;
      doc[b * T + t] = id;
    }
  }
  return doc;
}

// How got differs from want: max relative error and the first element off by more than tol·max|want|,
// with its index in the tensor's dimensions.
template <class Got>
std::string mismatch(const std::string& tensor, const Got& got, const std::vector<float>& want,
                     const std::vector<int64_t>& dims, const char* dim_names, double tol) {
  std::ostringstream os;
  os << tensor << ": max relative error " << testing::max_rel_error(got, want) << " (tolerance " << tol << ")";
  double max_abs = 1e-6;
  for (float w : want) max_abs = std::max(max_abs, std::fabs(double(w)));
  for (size_t i = 0; i < want.size(); ++i) {
    const double diff = std::fabs(double(got[i]) - double(want[i]));
    if (!(diff <= tol * max_abs)) {
      os << "; first wrong element " << i << " = [";
      int64_t rest = static_cast<int64_t>(i), stride = 1;
      for (int64_t d : dims) stride *= d;
      for (size_t k = 0; k < dims.size(); ++k) {
        stride /= dims[k];
        os << (k ? ", " : "") << dim_names[k] << "=" << rest / stride;
        rest %= stride;
      }
      os << "]: got " << got[i] << ", want " << want[i];
      break;
    }
  }
  return os.str();
}

#define EXPECT_TENSOR_NEAR(what, got, want, dims, names, tol)                                   \
  EXPECT_LE(::llm::testing::max_rel_error((got), (want)), (tol))                                \
      << what << "\n  " << mismatch(#got, (got), (want), (dims), (names), (tol))

struct Result {
  std::vector<float> out, lse, dq, dk, dv;
};

// Forward and backward of one implementation on the device; every output poisoned first.
Result run_gpu(AttentionKernel kernel, const cpu::AttentionShape& s, const std::vector<float>& q,
               const std::vector<float>& k, const std::vector<float>& v, const std::vector<int32_t>& docs,
               float scale, const std::vector<float>& out_for_backward, const std::vector<float>& lse_for_backward,
               const std::vector<float>& dout) {
  const cuda::AttentionShape gs{s.B, s.T, s.Hq, s.Hkv, s.D, s.window};
  DeviceBuffer<bf16> dq_in(testing::to_bf16(q)), dk_in(testing::to_bf16(k)), dv_in(testing::to_bf16(v));
  DeviceBuffer<int32_t> ddoc(docs.empty() ? std::vector<int32_t>{0} : docs);
  const int32_t* doc = docs.empty() ? nullptr : ddoc.get();
  DeviceBuffer<bf16> out(q.size());
  DeviceBuffer<float> lse(s.B * s.Hq * s.T);
  out.poison();
  lse.poison();
  cuda::attention_forward(gs, dq_in.get(), dk_in.get(), dv_in.get(), doc, scale, out.get(), lse.get(), nullptr, kernel);
  Result r;
  r.out = testing::to_float(out.download());
  r.lse = lse.download();

  DeviceBuffer<bf16> dout_in(testing::to_bf16(dout)), out_in(testing::to_bf16(out_for_backward));
  DeviceBuffer<float> lse_in(lse_for_backward);
  DeviceBuffer<bf16> dq(q.size()), dk(k.size()), dv(v.size());
  DeviceBuffer<unsigned char> workspace(cuda::attention_backward_workspace_bytes(gs));
  dq.poison();
  dk.poison();
  dv.poison();
  workspace.poison();
  cuda::attention_backward(gs, dq_in.get(), dk_in.get(), dv_in.get(), doc, scale, out_in.get(), lse_in.get(),
                           dout_in.get(), dq.get(), dk.get(), dv.get(), workspace.get(), nullptr, kernel);
  r.dq = testing::to_float(dq.download());
  r.dk = testing::to_float(dk.download());
  r.dv = testing::to_float(dv.download());
  return r;
}

class CudaAttention : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

TEST_P(CudaAttention, MatchesCpuForwardAndBackward) {
  LLM_SKIP_WITHOUT_GPU();
  const auto [D, T] = GetParam();
  const bool tensor_cores = D == 64 || D == 128;
  for (int64_t Hkv : {4, 2, 1})
    for (const Mask& m : kMasks) {
      const cpu::AttentionShape s{2, T, 4, Hkv, D, m.window};
      const uint64_t seed = static_cast<uint64_t>(D * 1000 + T * 10 + Hkv);
      const auto q = testing::round_bf16(testing::random_floats(s.B * T * s.Hq * D, seed, -2.f, 2.f));
      const auto k = testing::round_bf16(testing::random_floats(s.B * T * Hkv * D, seed + 1));
      const auto v = testing::round_bf16(testing::random_floats(s.B * T * Hkv * D, seed + 2));
      const auto dout = testing::round_bf16(testing::random_floats(s.B * T * s.Hq * D, seed + 3));
      const std::vector<int32_t> docs = m.docs ? make_docs(s.B, T) : std::vector<int32_t>{};
      const int32_t* doc = m.docs ? docs.data() : nullptr;
      const float scale = 1.f / std::sqrt(static_cast<float>(D));

      std::vector<float> out(q.size()), lse(s.B * s.Hq * T);
      cpu::attention_forward(s, q.data(), k.data(), v.data(), doc, scale, out.data(), lse.data());
      // The backward's inputs: the forward's output as the GPU stores it (bf16) and its lse.
      const auto out_b = testing::round_bf16(out);
      std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
      cpu::attention_backward(s, q.data(), k.data(), v.data(), doc, scale, out_b.data(), lse.data(), dout.data(),
                              dq.data(), dk.data(), dv.data());

      const std::vector<int64_t> q_dims{s.B, T, s.Hq, D}, kv_dims{s.B, T, Hkv, D}, lse_dims{s.B, s.Hq, T};
      std::vector<Result> results;
      std::vector<AttentionKernel> kernels{AttentionKernel::kSimple};
      if (tensor_cores) kernels.push_back(AttentionKernel::kTensorCore);
      for (AttentionKernel kernel : kernels) {
        const std::string what = describe(kernel, s, m);
        Result r;
        try {
          r = run_gpu(kernel, s, q, k, v, docs, scale, out_b, lse, dout);
        } catch (const std::exception& e) {
          FAIL() << what << ": " << e.what();  // a failed launch leaves the device unusable: stop here
        }
        EXPECT_TENSOR_NEAR(what, r.out, out, q_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, r.lse, lse, lse_dims, "bht", kLseTol);
        EXPECT_TENSOR_NEAR(what, r.dq, dq, q_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, r.dk, dk, kv_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, r.dv, dv, kv_dims, "bthd", kBf16Tol);
        results.push_back(r);
      }
      if (results.size() == 2) {  // the tensor-core kernels against the simple ones
        const std::string what = describe(AttentionKernel::kTensorCore, s, m) + " against the simple kernel";
        const Result& simple = results[0];
        const Result& fast = results[1];
        EXPECT_TENSOR_NEAR(what, fast.out, simple.out, q_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, fast.lse, simple.lse, lse_dims, "bht", kLseTol);
        EXPECT_TENSOR_NEAR(what, fast.dq, simple.dq, q_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, fast.dk, simple.dk, kv_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, fast.dv, simple.dv, kv_dims, "bthd", kBf16Tol);
      }
    }
}

INSTANTIATE_TEST_SUITE_P(Shapes, CudaAttention,
                         ::testing::Combine(::testing::Values<int64_t>(64, 128, 16, 40),
                                            ::testing::Values<int64_t>(1, 17, 127, 128, 257)),
                         [](const auto& case_info) {
                           return "D" + std::to_string(std::get<0>(case_info.param)) + "_T" +
                                  std::to_string(std::get<1>(case_info.param));
                         });

// The forward kernels of kTensorCore (attention.h): the wgmma kernel in its TMA and cp.async forms
// where this machine runs them (the parts left out are printed as skipped parts of `test`), and
// mma.sync.
struct ForwardKernel {
  bool wgmma, tma;
  const char* name;
};
std::vector<ForwardKernel> forward_kernels(const char* test) {
  std::vector<ForwardKernel> kernels;
  if (!cuda::attention_wgmma_available())
    std::printf("[ SKIPPED  ] the wgmma kernel's parts of %s: not compiled in (CUDA architectures without 90a), "
                "the device is not compute capability 9.0, or LLM_CUDA_EXCLUDE names it\n", test);
  else if (!cuda::attention_tma_available())
    std::printf("[ SKIPPED  ] the wgmma TMA kernel's part of %s: the driver offers no cuTensorMapEncodeTiled or "
                "LLM_CUDA_EXCLUDE names it\n", test);
  if (cuda::attention_tma_available()) kernels.push_back({true, true, "wgmma TMA"});
  if (cuda::attention_wgmma_available()) kernels.push_back({true, false, "wgmma cp.async"});
  kernels.push_back({false, false, "mma.sync"});
  return kernels;
}
// Tests force the switches; each restores them.
struct RestoreForwardSwitches {
  bool wgmma = cuda::attention_wgmma_enabled(), tma = cuda::attention_tma_enabled();
  ~RestoreForwardSwitches() {
    cuda::set_attention_wgmma(wgmma);
    cuda::set_attention_tma(tma);
  }
};
void use_forward_kernel(const ForwardKernel& k) {
  cuda::set_attention_wgmma(k.wgmma);
  cuda::set_attention_tma(k.tma);
}

// The wgmma forward's self-checks (attention.h) pass, of both forms: the switches are still on after
// the first forward of each D. The first test of this file to run (plain tests run in their order,
// before the parameterized ones), so nothing has forced the switches yet.
TEST(CudaAttention, WgmmaForwardPassesItsSelfCheck) {
  LLM_SKIP_WITHOUT_GPU();
  if (!cuda::attention_wgmma_available())
    GTEST_SKIP() << "the wgmma forward is not compiled in (CUDA architectures without 90a), the device is not "
                    "compute capability 9.0, or LLM_CUDA_EXCLUDE names it";
  if (!cuda::attention_wgmma_enabled()) GTEST_SKIP() << "LLM_CUDA_WGMMA=0 turned the wgmma kernels off";
  const bool tma = cuda::attention_tma_available() && cuda::attention_tma_enabled();
  if (!tma)
    std::printf("[ SKIPPED  ] the TMA form's part of CudaAttention.WgmmaForwardPassesItsSelfCheck: %s\n",
                cuda::attention_tma_available() ? "LLM_CUDA_TMA=0 turned it off"
                                                : "the driver offers no cuTensorMapEncodeTiled or LLM_CUDA_EXCLUDE names it");
  for (int64_t D : {64, 128}) {
    const cuda::AttentionShape s{1, 130, 2, 1, D, 0};
    DeviceBuffer<bf16> q(testing::to_bf16(testing::random_floats(130 * 2 * D, 21)));
    DeviceBuffer<bf16> kv(testing::to_bf16(testing::random_floats(130 * D, 22))), out(130 * 2 * D);
    DeviceBuffer<float> lse(2 * 130);
    cuda::attention_forward(s, q.get(), kv.get(), kv.get(), nullptr, 0.125f, out.get(), lse.get(), nullptr,
                            AttentionKernel::kTensorCore);
    EXPECT_TRUE(cuda::attention_wgmma_enabled())
        << "the wgmma forward (D=" << D << ") failed its self-check against the mma.sync kernel and turned "
        << "itself off: its stderr line says by how much";
    if (tma) {
      EXPECT_TRUE(cuda::attention_tma_enabled())
          << "the wgmma forward's TMA form (D=" << D << ") failed its self-check against the mma.sync kernel and "
          << "turned itself off: its stderr line says why";
    }
  }
}

// The wgmma backward kernels' self-check (attention.h) passes for both head dims. The backward on
// both sets of kernels is tested against the CPU by TokenStridesOnEveryKernel (switch on and off)
// and the Shapes tests (the default kernels).
TEST(CudaAttention, WgmmaBackwardPassesItsSelfCheck) {
  LLM_SKIP_WITHOUT_GPU();
  if (!cuda::attention_backward_wgmma_available())
    GTEST_SKIP() << "the wgmma backward kernels are not compiled in (CUDA architectures without 90a), the device is "
                    "not compute capability 9.0, or LLM_CUDA_EXCLUDE names them";
  if (!cuda::attention_wgmma_enabled()) GTEST_SKIP() << "LLM_CUDA_WGMMA=0 turned the wgmma kernels off";
  for (int64_t D : {64, 128})
    EXPECT_TRUE(cuda::attention_backward_wgmma_in_use(D))
        << "a wgmma backward kernel (D=" << D << ") failed its self-check against the mma.sync kernels: its stderr "
        << "line says which and by how much";
}

// The tensor-core forward on each of its kernels, wgmma (Hopper: TMA and cp.async forms) and mma.sync,
// against the CPU: sequence lengths around the wgmma kernel's 128-query blocks and 128-key tiles,
// grouped heads, documents, windows.
TEST(CudaAttention, TensorCoreForwardOnEveryKernel) {
  LLM_SKIP_WITHOUT_GPU();
  RestoreForwardSwitches restore;
  const std::vector<ForwardKernel> kernels = forward_kernels("CudaAttention.TensorCoreForwardOnEveryKernel");
  for (int64_t D : {64, 128})
    for (int64_t T : {1, 17, 127, 129, 257, 1000})
      for (int64_t Hkv : {4, 2, 1})
        for (const Mask& m : kMasks) {
          const cpu::AttentionShape s{2, T, 4, Hkv, D, m.window};
          const uint64_t seed = static_cast<uint64_t>(D * 1000 + T * 10 + Hkv) + 7;
          const auto q = testing::round_bf16(testing::random_floats(s.B * T * s.Hq * D, seed, -2.f, 2.f));
          const auto k = testing::round_bf16(testing::random_floats(s.B * T * Hkv * D, seed + 1));
          const auto v = testing::round_bf16(testing::random_floats(s.B * T * Hkv * D, seed + 2));
          const std::vector<int32_t> docs = m.docs ? make_docs(s.B, T) : std::vector<int32_t>{};
          const float scale = 1.f / std::sqrt(static_cast<float>(D));
          std::vector<float> out(q.size()), lse(s.B * s.Hq * T);
          cpu::attention_forward(s, q.data(), k.data(), v.data(), m.docs ? docs.data() : nullptr, scale, out.data(),
                                 lse.data());
          const std::vector<int64_t> q_dims{s.B, T, s.Hq, D}, lse_dims{s.B, s.Hq, T};

          const cuda::AttentionShape gs{s.B, T, s.Hq, Hkv, D, m.window};
          DeviceBuffer<bf16> dq(testing::to_bf16(q)), dk(testing::to_bf16(k)), dv(testing::to_bf16(v));
          DeviceBuffer<int32_t> ddoc(docs.empty() ? std::vector<int32_t>{0} : docs);
          DeviceBuffer<bf16> dout(q.size());
          DeviceBuffer<float> dlse(lse.size());
          for (const ForwardKernel& kernel : kernels) {
            const std::string what = std::string(kernel.name) + " forward, " +
                                     describe(AttentionKernel::kTensorCore, s, m);
            dout.poison();
            dlse.poison();
            use_forward_kernel(kernel);
            try {
              cuda::attention_forward(gs, dq.get(), dk.get(), dv.get(), m.docs ? ddoc.get() : nullptr, scale,
                                      dout.get(), dlse.get(), nullptr, AttentionKernel::kTensorCore);
              cuda::check(cudaDeviceSynchronize(), "attention forward");
            } catch (const std::exception& e) {
              FAIL() << what << ": " << e.what();  // a failed launch leaves the device unusable: stop here
            }
            if ((kernel.wgmma && !cuda::attention_wgmma_enabled()) || (kernel.tma && !cuda::attention_tma_enabled()))
              ADD_FAILURE() << what << ": a self-check turned this kernel off (see its stderr line); this shape "
                            << "ran on its fallback";
            const std::vector<float> gpu_out = testing::to_float(dout.download()), gpu_lse = dlse.download();
            EXPECT_TENSOR_NEAR(what, gpu_out, out, q_dims, "bthd", kBf16Tol);
            EXPECT_TENSOR_NEAR(what, gpu_lse, lse, lse_dims, "bht", kLseTol);
          }
        }
}

// q, k, v as views of one fused bf16 [B, T, Hq + 2·Hkv, D] tensor (plus 8 padding elements per token)
// through the token strides, dq, dk, dv written into views of a fused gradient: every kernel against
// the CPU on dense copies, and the padding between the views' rows left as it was.
TEST(CudaAttention, TokenStridesOnEveryKernel) {
  LLM_SKIP_WITHOUT_GPU();
  RestoreForwardSwitches restore;
  struct Path {
    AttentionKernel kernel;
    ForwardKernel forward;
    std::string name;
  };
  std::vector<Path> paths{{AttentionKernel::kSimple, {false, false, ""}, "simple"}};
  for (const ForwardKernel& k : forward_kernels("CudaAttention.TokenStridesOnEveryKernel"))
    paths.push_back({AttentionKernel::kTensorCore, k, std::string("tensor-core (") + k.name + " forward)"});
  for (int64_t D : {64, 128})
    for (int64_t T : {129, 257}) {
      const cpu::AttentionShape s{2, T, 4, 2, D, 0};
      const uint64_t seed = static_cast<uint64_t>(D + T);
      const auto q = testing::round_bf16(testing::random_floats(s.B * T * s.Hq * D, seed, -2.f, 2.f));
      const auto k = testing::round_bf16(testing::random_floats(s.B * T * s.Hkv * D, seed + 1));
      const auto v = testing::round_bf16(testing::random_floats(s.B * T * s.Hkv * D, seed + 2));
      const auto dout = testing::round_bf16(testing::random_floats(s.B * T * s.Hq * D, seed + 3));
      const std::vector<int32_t> docs = make_docs(s.B, T);
      const float scale = 1.f / std::sqrt(static_cast<float>(D));
      std::vector<float> out(q.size()), lse(s.B * s.Hq * T);
      cpu::attention_forward(s, q.data(), k.data(), v.data(), docs.data(), scale, out.data(), lse.data());
      const auto out_b = testing::round_bf16(out);
      std::vector<float> dq(q.size()), dk(k.size()), dv(v.size());
      cpu::attention_backward(s, q.data(), k.data(), v.data(), docs.data(), scale, out_b.data(), lse.data(),
                              dout.data(), dq.data(), dk.data(), dv.data());

      const int64_t q_row = s.Hq * D, kv_row = s.Hkv * D, stride = q_row + 2 * kv_row + 8, rows = s.B * T;
      std::vector<float> qkv(static_cast<size_t>(rows * stride), 0.5f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < q_row + 2 * kv_row; ++i)
          qkv[r * stride + i] = i < q_row ? q[r * q_row + i]
                                          : i < q_row + kv_row ? k[r * kv_row + i - q_row]
                                                               : v[r * kv_row + i - q_row - kv_row];
      const cuda::AttentionShape gs{s.B, T, s.Hq, s.Hkv, D, 0, stride, stride};
      DeviceBuffer<bf16> dqkv(testing::to_bf16(qkv)), dout_in(testing::to_bf16(dout)), out_in(testing::to_bf16(out_b));
      DeviceBuffer<int32_t> ddoc(docs);
      DeviceBuffer<float> lse_in(lse);
      const bf16 *gq = dqkv.get(), *gk = gq + q_row, *gv = gk + kv_row;
      for (const Path& path : paths) {
        const std::string what = path.name + " kernel with token strides " + std::to_string(stride) +
                                 ", B=2 T=" + std::to_string(T) + " Hq=4 Hkv=2 D=" + std::to_string(D) +
                                 " with documents";
        use_forward_kernel(path.forward);
        DeviceBuffer<bf16> gout(q.size()), grads(qkv.size());
        DeviceBuffer<float> glse(lse.size());
        DeviceBuffer<unsigned char> workspace(cuda::attention_backward_workspace_bytes(gs));
        gout.poison();
        glse.poison();
        grads.poison();
        bf16 *gdq = grads.get(), *gdk = gdq + q_row, *gdv = gdk + kv_row;
        try {
          cuda::attention_forward(gs, gq, gk, gv, ddoc.get(), scale, gout.get(), glse.get(), nullptr, path.kernel);
          cuda::attention_backward(gs, gq, gk, gv, ddoc.get(), scale, out_in.get(), lse_in.get(), dout_in.get(), gdq,
                                   gdk, gdv, workspace.get(), nullptr, path.kernel);
          cuda::check(cudaDeviceSynchronize(), "attention with token strides");
        } catch (const std::exception& e) {
          FAIL() << what << ": " << e.what();  // a failed launch leaves the device unusable: stop here
        }
        const std::vector<float> gpu_out = testing::to_float(gout.download()), gpu_lse = glse.download();
        const std::vector<float> fused = testing::to_float(grads.download());
        std::vector<float> gpu_dq(dq.size()), gpu_dk(dk.size()), gpu_dv(dv.size());
        bool padding_kept = true;
        for (int64_t r = 0; r < rows; ++r) {
          std::copy_n(&fused[r * stride], q_row, &gpu_dq[r * q_row]);
          std::copy_n(&fused[r * stride + q_row], kv_row, &gpu_dk[r * kv_row]);
          std::copy_n(&fused[r * stride + q_row + kv_row], kv_row, &gpu_dv[r * kv_row]);
          for (int64_t i = q_row + 2 * kv_row; i < stride; ++i)
            padding_kept = padding_kept && std::isnan(fused[r * stride + i]);
        }
        const std::vector<int64_t> q_dims{s.B, T, s.Hq, D}, kv_dims{s.B, T, s.Hkv, D}, lse_dims{s.B, s.Hq, T};
        EXPECT_TENSOR_NEAR(what, gpu_out, out, q_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, gpu_lse, lse, lse_dims, "bht", kLseTol);
        EXPECT_TENSOR_NEAR(what, gpu_dq, dq, q_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, gpu_dk, dk, kv_dims, "bthd", kBf16Tol);
        EXPECT_TENSOR_NEAR(what, gpu_dv, dv, kv_dims, "bthd", kBf16Tol);
        EXPECT_TRUE(padding_kept) << what << ": an element between the gradient views' rows was written";
      }
    }
}

TEST(CudaAttention, TensorCoreBackwardIsDeterministic) {
  LLM_SKIP_WITHOUT_GPU();
  // Every gradient element has one owner (no float atomics), so two runs agree to the bit.
  const cuda::AttentionShape s{2, 257, 4, 1, 64, 0};
  const size_t nq = 2 * 257 * 4 * 64, nkv = 2 * 257 * 64;
  DeviceBuffer<bf16> q(testing::to_bf16(testing::random_floats(nq, 11, -2.f, 2.f)));
  DeviceBuffer<bf16> k(testing::to_bf16(testing::random_floats(nkv, 12))), v(testing::to_bf16(testing::random_floats(nkv, 13)));
  DeviceBuffer<bf16> dout(testing::to_bf16(testing::random_floats(nq, 14))), out(nq), dq(nq), dk(nkv), dv(nkv);
  DeviceBuffer<int32_t> doc(make_docs(2, 257));
  DeviceBuffer<float> lse(2 * 4 * 257);
  DeviceBuffer<unsigned char> workspace(cuda::attention_backward_workspace_bytes(s));
  const float scale = 0.125f;
  cuda::attention_forward(s, q.get(), k.get(), v.get(), doc.get(), scale, out.get(), lse.get(), nullptr,
                          AttentionKernel::kTensorCore);
  std::vector<std::vector<bf16>> runs[2];
  for (auto& run : runs) {
    dq.poison();
    dk.poison();
    dv.poison();
    cuda::attention_backward(s, q.get(), k.get(), v.get(), doc.get(), scale, out.get(), lse.get(), dout.get(), dq.get(),
                             dk.get(), dv.get(), workspace.get(), nullptr, AttentionKernel::kTensorCore);
    run = {dq.download(), dk.download(), dv.download()};
  }
  const char* names[] = {"dq", "dk", "dv"};
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(0, std::memcmp(runs[0][i].data(), runs[1][i].data(), runs[0][i].size() * sizeof(bf16)))
        << names[i] << " differs between two identical tensor-core backward runs";
}

TEST(CudaAttention, AutoFallsBackToTheSimpleKernel) {
  LLM_SKIP_WITHOUT_GPU();
  // D = 40 has no tensor-core kernel: asking for it is an error, kAuto falls back to the simple one.
  const cuda::AttentionShape s{1, 8, 2, 1, 40, 0};
  DeviceBuffer<bf16> q(8 * 2 * 40), kv(8 * 40), out(8 * 2 * 40);
  DeviceBuffer<float> lse(2 * 8);
  q.upload(testing::to_bf16(testing::random_floats(q.size(), 1)));
  kv.upload(testing::to_bf16(testing::random_floats(kv.size(), 2)));
  EXPECT_THROW(cuda::attention_forward(s, q.get(), kv.get(), kv.get(), nullptr, 0.5f, out.get(), lse.get(), nullptr,
                                       AttentionKernel::kTensorCore),
               std::runtime_error);
  out.poison();
  cuda::attention_forward(s, q.get(), kv.get(), kv.get(), nullptr, 0.5f, out.get(), lse.get(), nullptr);
  for (float x : testing::to_float(out.download())) ASSERT_TRUE(std::isfinite(x)) << "kAuto left an output unwritten";
  // D = 64 with a q that is not 16-byte aligned: kAuto takes the simple kernel (the same bits).
  const cuda::AttentionShape s64{1, 8, 2, 1, 64, 0};
  DeviceBuffer<bf16> q64(8 * 2 * 64 + 1), kv64(8 * 64), out_auto(8 * 2 * 64), out_simple(8 * 2 * 64);
  DeviceBuffer<float> lse64(2 * 8);
  q64.upload(testing::to_bf16(testing::random_floats(q64.size(), 3)));
  kv64.upload(testing::to_bf16(testing::random_floats(kv64.size(), 4)));
  const bf16* unaligned_q = q64.get() + 1;
  EXPECT_THROW(cuda::attention_forward(s64, unaligned_q, kv64.get(), kv64.get(), nullptr, 0.5f, out_auto.get(),
                                       lse64.get(), nullptr, AttentionKernel::kTensorCore),
               std::runtime_error);
  out_auto.poison();
  cuda::attention_forward(s64, unaligned_q, kv64.get(), kv64.get(), nullptr, 0.5f, out_auto.get(), lse64.get(), nullptr);
  cuda::attention_forward(s64, unaligned_q, kv64.get(), kv64.get(), nullptr, 0.5f, out_simple.get(), lse64.get(), nullptr,
                          AttentionKernel::kSimple);
  const auto got = out_auto.download(), want = out_simple.download();
  EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size() * sizeof(bf16))) << "kAuto with an unaligned q";
}

// Argument checks happen on the host before any launch, so this one runs without a GPU too.
TEST(CudaAttentionArguments, BadShapesThrowNamingTheFunction) {
  const auto message = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("(no exception)");
  };
  alignas(16) static bf16 host[16];  // never read: every call below stops before a launch
  alignas(16) static float stats[4];
  const auto forward = [&](cuda::AttentionShape s, AttentionKernel kernel = AttentionKernel::kAuto) {
    return [=] { cuda::attention_forward(s, host, host, host, nullptr, 1.f, host, stats, nullptr, kernel); };
  };
  EXPECT_EQ(message(forward({1, 8, 3, 2, 64, 0})), "cuda::attention_forward: Hq (3) must be a multiple of Hkv (2)");
  EXPECT_EQ(message(forward({1, 8, 2, 1, 41, 0})), "cuda::attention_forward: head dimension 41: must be even and at most 256");
  EXPECT_EQ(message(forward({1, 8, 2, 1, 40, 0}, AttentionKernel::kTensorCore)),
            "cuda::attention_forward: the tensor-core kernel needs D = 64 or 128 (got 40), 16-byte aligned tensors "
            "and token strides that are multiples of 8");
  EXPECT_EQ(message(forward({1, 8, 2, 1, 64, 0, 127, 0})),
            "cuda::attention_forward: token strides must be 0 (dense) or at least H·D (q_stride 127, kv_stride 0)");
  EXPECT_EQ(message(forward({1, 8, 2, 1, 64, 0, 0, 68}, AttentionKernel::kTensorCore)),
            "cuda::attention_forward: the tensor-core kernel needs D = 64 or 128 (got 64), 16-byte aligned tensors "
            "and token strides that are multiples of 8");
  EXPECT_EQ(message(forward({1, -1, 2, 1, 64, 0})), "cuda::attention_forward: negative size in the shape");
  EXPECT_EQ(message(forward({0, 8, 2, 1, 64, 0})), "(no exception)");  // nothing to compute
  const cuda::AttentionShape s{1, 8, 2, 1, 64, 0};
  EXPECT_EQ(message([&] {
              cuda::attention_backward(s, host, host, host, nullptr, 1.f, host, stats, host, host, host, host,
                                       reinterpret_cast<char*>(stats) + 2, nullptr);
            }),
            "cuda::attention_backward: workspace is not 4-byte aligned");
}

}  // namespace
}  // namespace llm
