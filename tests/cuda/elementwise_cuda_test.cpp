// The CUDA elementwise kernels (kernels/cuda/elementwise.h) against the CPU kernels on the same
// (bf16-rounded where the kernel reads bf16) inputs: fp32 paths within 1e-5, bf16 within 1e-2, casts,
// copies, fills and the dropout mask exactly.
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "kernels/cpu/elementwise.h"
#include "kernels/cuda/elementwise.h"
#include "tests/cuda/compare.h"
#include "tests/cuda/cuda_testing.h"

namespace llm::testing {
namespace {

const int64_t kSizes[] = {1, 3, 17, 127, 257, 4095, 4097, 100003};

std::string label(const char* what, const char* type, int64_t n) {
  return std::string(what) + " " + type + " n=" + std::to_string(n);
}

std::vector<float> download_f32(const DeviceBuffer<float>& d) { return d.download(); }
std::vector<float> download_f32(const DeviceBuffer<cuda::bf16>& d) { return to_float(d.download()); }

// Inputs for T: fp32 values as they are, bf16 values rounded (the CPU reference sees what the GPU sees).
template <class T> std::vector<float> inputs_for(size_t n, uint64_t seed);
template <> std::vector<float> inputs_for<float>(size_t n, uint64_t seed) { return random_floats(n, seed); }
template <> std::vector<float> inputs_for<cuda::bf16>(size_t n, uint64_t seed) { return round_bf16(random_floats(n, seed)); }
template <class T> std::vector<T> device_values(const std::vector<float>& x);
template <> std::vector<float> device_values<float>(const std::vector<float>& x) { return x; }
template <> std::vector<cuda::bf16> device_values<cuda::bf16>(const std::vector<float>& x) { return to_bf16(x); }

template <class T> struct TypeInfo;
template <> struct TypeInfo<float> { static constexpr const char* name = "f32"; static constexpr double tol = 1e-5; };
template <> struct TypeInfo<cuda::bf16> { static constexpr const char* name = "bf16"; static constexpr double tol = 1e-2; };

TEST(CudaElementwise, CastsRoundToNearestEvenLikeTheHost) {
  LLM_SKIP_WITHOUT_GPU();
  for (int64_t n : kSizes) {
    std::vector<float> x = random_floats(size_t(n), 11, -1e3f, 1e3f);
    x[0] = std::numeric_limits<float>::quiet_NaN();
    DeviceBuffer<float> dx(x);
    DeviceBuffer<cuda::bf16> db(static_cast<size_t>(n));
    db.poison();
    cuda::f32_to_bf16(n, dx.get(), db.get(), nullptr);
    const std::vector<cuda::bf16> got = db.download(), want = to_bf16(x);
    for (int64_t i = 0; i < n; ++i) {
      uint16_t g, w;
      std::memcpy(&g, &got[size_t(i)], 2);
      std::memcpy(&w, &want[size_t(i)], 2);
      if (i == 0) {
        ASSERT_TRUE(std::isnan(__bfloat162float(got[0]))) << "f32_to_bf16 n=" << n << ": NaN did not stay NaN";
        continue;
      }
      ASSERT_EQ(g, w) << "f32_to_bf16 n=" << n << " index " << i << ": " << x[size_t(i)];
    }
    DeviceBuffer<float> back(static_cast<size_t>(n));
    back.poison();
    cuda::bf16_to_f32(n, db.get(), back.get(), nullptr);
    std::vector<float> b = back.download(), want_back = to_float(want);
    b[0] = want_back[0] = 0.f;  // NaN, checked above
    EXPECT_TRUE(close_to(label("bf16_to_f32", "", n), b, want_back, 0.0));
  }
}

// dst = src for a permuted, sliced view of a contiguous source, every element size.
template <class E>
void check_copy(const std::vector<int64_t>& base, const std::vector<int>& perm, int64_t slice_start) {
  const int nd = int(base.size());
  std::vector<int64_t> base_strides(size_t(nd), 1);
  for (int d = nd - 2; d >= 0; --d) base_strides[size_t(d)] = base_strides[size_t(d + 1)] * base[size_t(d + 1)];
  const int64_t total = std::accumulate(base.begin(), base.end(), int64_t(1), std::multiplies<int64_t>());
  std::vector<E> src(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) src[size_t(i)] = E(i * 7 + 3);
  // The view: dimensions permuted, the first view dimension starting at slice_start.
  cuda::StridedCopy layout;
  layout.ndim = nd;
  int64_t n = 1;
  for (int d = 0; d < nd; ++d) {
    layout.shape[d] = base[size_t(perm[size_t(d)])] - (d == 0 ? slice_start : 0);
    layout.src_strides[d] = base_strides[size_t(perm[size_t(d)])];
    n *= layout.shape[d];
  }
  for (int d = nd - 1, s = 1; d >= 0; --d) {
    layout.dst_strides[d] = s;
    s *= int(layout.shape[d]);
  }
  const int64_t src_offset = slice_start * layout.src_strides[0];
  std::vector<E> want(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    int64_t rest = i, off = src_offset;
    for (int d = nd - 1; d >= 0; --d) {
      off += (rest % layout.shape[d]) * layout.src_strides[d];
      rest /= layout.shape[d];
    }
    want[size_t(i)] = src[size_t(off)];
  }
  DeviceBuffer<E> dsrc(src), ddst(static_cast<size_t>(n));
  ddst.poison();
  cuda::copy_strided(layout, int(sizeof(E)), dsrc.get() + src_offset, ddst.get(), nullptr);
  const std::vector<E> got = ddst.download();
  for (int64_t i = 0; i < n; ++i)
    ASSERT_EQ(got[size_t(i)], want[size_t(i)]) << "copy_strided elem_size " << sizeof(E) << " ndim " << nd
                                               << " slice " << slice_start << ": first wrong index " << i;
}

TEST(CudaElementwise, StridedCopyOfPermutedSlicedViews) {
  LLM_SKIP_WITHOUT_GPU();
  check_copy<uint32_t>({17}, {0}, 3);
  check_copy<uint32_t>({3, 17}, {1, 0}, 1);
  check_copy<uint16_t>({2, 127, 3, 5}, {0, 2, 1, 3}, 0);  // the [B, T, H, D] -> [B, H, T, D] transpose
  check_copy<uint16_t>({4, 3, 17, 2, 5}, {4, 2, 0, 3, 1}, 2);
  check_copy<uint8_t>({5, 257}, {1, 0}, 100);
  check_copy<uint64_t>({3, 4, 5}, {2, 1, 0}, 1);
}

template <class T>
void check_maps() {
  const char* type = TypeInfo<T>::name;
  const double tol = TypeInfo<T>::tol;
  for (int64_t n : kSizes) {
    const std::vector<float> a = inputs_for<T>(size_t(n), 1), b = inputs_for<T>(size_t(n), 2);
    DeviceBuffer<T> da(device_values<T>(a)), db(device_values<T>(b)), dy(static_cast<size_t>(n));
    std::vector<float> want(static_cast<size_t>(n));

    dy.poison();
    cuda::add<T>(n, da.get(), 0.5f, n, db.get(), -2.f, dy.get(), nullptr);
    for (int64_t i = 0; i < n; ++i) want[size_t(i)] = 0.5f * a[size_t(i)] - 2.f * b[size_t(i)];
    EXPECT_TRUE(close_to(label("add", type, n), download_f32(dy), want, tol));

    dy.poison();
    cuda::mul<T>(n, da.get(), n, db.get(), dy.get(), nullptr);
    cpu::mul(n, a.data(), b.data(), want.data());
    EXPECT_TRUE(close_to(label("mul", type, n), download_f32(dy), want, tol));

    dy.poison();
    cuda::scale<T>(n, da.get(), 0.37f, dy.get(), nullptr);
    cpu::scale(n, a.data(), 0.37f, want.data());
    EXPECT_TRUE(close_to(label("scale", type, n), download_f32(dy), want, tol));

    dy.poison();
    cuda::fill<T>(n, -2.5f, dy.get(), nullptr);
    EXPECT_TRUE(close_to(label("fill", type, n), download_f32(dy), std::vector<float>(size_t(n), -2.5f), 0.0));

    // In place (y aliases a), as the engine's add_ does.
    cuda::add<T>(n, da.get(), 1.f, n, db.get(), 1.f, da.get(), nullptr);
    cpu::add(n, a.data(), b.data(), want.data());
    EXPECT_TRUE(close_to(label("add in place", type, n), download_f32(da), want, tol));

    const std::vector<float> acc0 = random_floats(size_t(n), 3);
    DeviceBuffer<float> dacc(acc0);
    cuda::accumulate<T>(n, db.get(), dacc.get(), nullptr);
    cpu::add(n, acc0.data(), b.data(), want.data());
    EXPECT_TRUE(close_to(label("accumulate", type, n), dacc.download(), want, 1e-5));
  }
}

TEST(CudaElementwise, MapsF32) { LLM_SKIP_WITHOUT_GPU(); check_maps<float>(); }
TEST(CudaElementwise, MapsBf16) { LLM_SKIP_WITHOUT_GPU(); check_maps<cuda::bf16>(); }

TEST(CudaElementwise, FillI32) {
  LLM_SKIP_WITHOUT_GPU();
  DeviceBuffer<int32_t> d(257);
  d.poison();
  cuda::fill(257, int32_t(-7), d.get(), nullptr);
  EXPECT_EQ(d.download(), std::vector<int32_t>(257, -7));
}

template <class T>
void check_broadcasts() {
  const char* type = TypeInfo<T>::name;
  const double tol = TypeInfo<T>::tol;
  const int64_t shapes[][2] = {{1, 1}, {3, 17}, {17, 3}, {5, 127}, {300, 257}, {257, 1}};
  for (const auto& s : shapes) {
    const int64_t N = s[0], C = s[1], n = N * C;
    const std::string what = std::string(type) + " N=" + std::to_string(N) + " C=" + std::to_string(C);
    const std::vector<float> x = inputs_for<T>(size_t(n), 4), row = inputs_for<T>(size_t(C), 5);
    DeviceBuffer<T> dx(device_values<T>(x)), drow(device_values<T>(row)), dy(static_cast<size_t>(n));
    std::vector<float> want(static_cast<size_t>(n));
    dy.poison();
    cuda::add<T>(n, dx.get(), 1.f, C, drow.get(), 1.f, dy.get(), nullptr);
    cpu::add_rows(N, C, x.data(), row.data(), want.data());
    EXPECT_TRUE(close_to("add rows " + what, download_f32(dy), want, tol));
    dy.poison();
    cuda::mul<T>(n, dx.get(), C, drow.get(), dy.get(), nullptr);
    cpu::mul_rows(N, C, x.data(), row.data(), want.data());
    EXPECT_TRUE(close_to("mul rows " + what, download_f32(dy), want, tol));

    DeviceBuffer<float> dsum(static_cast<size_t>(C));
    dsum.poison();
    cuda::sum_rows<T>(N, C, dx.get(), dsum.get(), nullptr);
    std::vector<float> want_sum(static_cast<size_t>(C));
    cpu::sum_rows(N, C, x.data(), want_sum.data());
    EXPECT_TRUE(close_to("sum_rows " + what, dsum.download(), want_sum, 1e-5));
  }
}

TEST(CudaElementwise, RowBroadcastsF32) { LLM_SKIP_WITHOUT_GPU(); check_broadcasts<float>(); }
TEST(CudaElementwise, RowBroadcastsBf16) { LLM_SKIP_WITHOUT_GPU(); check_broadcasts<cuda::bf16>(); }

template <class T>
void check_sums() {
  const char* type = TypeInfo<T>::name;
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(17), int64_t(4096), int64_t(4097), int64_t(1000003)}) {
    const std::vector<float> x = inputs_for<T>(size_t(n), 6);
    DeviceBuffer<T> dx(device_values<T>(x));
    DeviceBuffer<double> work(size_t(cuda::sum_workspace_elems(n)));
    DeviceBuffer<float> out(2);
    out.poison();
    for (int squares = 0; squares < 2; ++squares) {
      cuda::sum<T>(n, dx.get(), squares, out.get(), work.get(), nullptr);
      cuda::sum<T>(n, dx.get(), squares, out.get() + 1, work.get(), nullptr);
      const std::vector<float> got = out.download();
      const double want = squares ? cpu::sum_squares(n, x.data()) : cpu::sum(n, x.data());
      // Both accumulate in fp64; the GPU's result is then rounded once to fp32 (2^-24 relative).
      EXPECT_NEAR(got[0], want, 1e-6 * (std::fabs(want) + 1.0)) << (squares ? "sum of squares " : "sum ") << type << " n=" << n;
      EXPECT_EQ(got[0], got[1]) << "sum " << type << " n=" << n << " is not deterministic";
    }
  }
}

TEST(CudaElementwise, DeterministicSumF32) { LLM_SKIP_WITHOUT_GPU(); check_sums<float>(); }
TEST(CudaElementwise, DeterministicSumBf16) { LLM_SKIP_WITHOUT_GPU(); check_sums<cuda::bf16>(); }

TEST(CudaElementwise, DropoutDrawsTheCpuMask) {
  LLM_SKIP_WITHOUT_GPU();
  for (int64_t n : kSizes) {
    for (float p : {0.1f, 0.5f, 1.0f}) {
      const std::string what = "dropout p=" + std::to_string(p) + " n=" + std::to_string(n);
      const std::vector<float> x = inputs_for<float>(size_t(n), 7);
      std::vector<float> want(static_cast<size_t>(n));
      cpu::dropout_forward(n, x.data(), p, 1234, want.data());
      DeviceBuffer<float> dx(x), dy(static_cast<size_t>(n));
      dy.poison();
      cuda::dropout<float>(n, dx.get(), p, 1234, dy.get(), nullptr);
      EXPECT_TRUE(close_to(what + " f32", dy.download(), want, 0.0));  // the same mask and scale: bit-exact

      const std::vector<float> xb = inputs_for<cuda::bf16>(size_t(n), 7);
      cpu::dropout_forward(n, xb.data(), p, 1234, want.data());
      DeviceBuffer<cuda::bf16> dxb(to_bf16(xb)), dyb(static_cast<size_t>(n));
      dyb.poison();
      cuda::dropout<cuda::bf16>(n, dxb.get(), p, 1234, dyb.get(), nullptr);
      const std::vector<float> got = to_float(dyb.download());
      EXPECT_TRUE(close_to(what + " bf16", got, want, 1e-2));
      for (int64_t i = 0; i < n; ++i)
        ASSERT_EQ(got[size_t(i)] == 0.f, want[size_t(i)] == 0.f) << what << " bf16: mask differs at index " << i;
    }
  }
}

}  // namespace
}  // namespace llm::testing
