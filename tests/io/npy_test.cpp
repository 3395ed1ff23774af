// .npy files: headers byte-identical to numpy's, round trips, hand-made int64/float64/version-2.0
// files, and one clear error for each way a file can be wrong.
#include "engine/io/npy.h"

#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/core/error.h"
#include "tests/common/testing.h"
#include "tests/data/data_test_util.h"

namespace llm::testing {
namespace {

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// A version 1.0 (or 2.0) file from a dict text, padded as numpy pads, then `data`.
std::string npy_file(const std::string& dict, const std::string& data, int version = 1) {
  const size_t prefix = version == 1 ? 10 : 12;
  std::string d = dict;
  while ((prefix + d.size() + 1) % 64) d += ' ';
  d += '\n';
  std::string out = std::string("\x93NUMPY", 6) + static_cast<char>(version) + '\0';
  const size_t n = d.size();
  out += static_cast<char>(n & 0xFF);
  out += static_cast<char>((n >> 8) & 0xFF);
  if (version != 1) out += std::string(2, '\0');
  return out + d + data;
}

template <typename T>
std::string raw(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown (expected one mentioning '" << parts.front() << "')";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(Npy, HeaderIsByteIdenticalToNumpys) {
  // np.save(io.BytesIO(), np.zeros((2, 3), np.float32)) etc. with numpy 1.24: 128 header bytes.
  const auto numpy = [](const std::string& dict) {
    std::string s = std::string("\x93NUMPY\x01\x00v\x00", 10) + dict;
    s.append(127 - s.size(), ' ');
    return s + "\n";
  };
  EXPECT_EQ(io::npy_header("<f4", Shape{2, 3}), numpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"));
  EXPECT_EQ(io::npy_header("<i4", Shape{5}), numpy("{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }"));
  EXPECT_EQ(io::npy_header("<f4", Shape{2, 3, 7}), numpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 7), }"));
}

TEST(Npy, RoundTripsFloat32AndInt32) {
  TempDir dir("npy");
  const std::vector<float> f = random_floats(2 * 3 * 7, 3, -50.f, 50.f);
  io::write_npy(dir / "f.npy", Tensor::from_vector(f, Shape{2, 3, 7}));
  const Tensor gf = io::read_npy(dir / "f.npy");
  EXPECT_EQ(gf.dtype(), DType::F32);
  EXPECT_EQ(gf.shape(), (Shape{2, 3, 7}));
  EXPECT_EQ(gf.to_vector<float>(), f);
  EXPECT_EQ(std::filesystem::file_size(dir / "f.npy"), 128u + f.size() * 4);

  const std::vector<int32_t> i = {-7, 0, 1, 2147483647, -2147483647 - 1};
  io::write_npy(dir / "i.npy", Tensor::from_vector(i, Shape{5}));
  const Tensor gi = io::read_npy(dir / "i.npy");
  EXPECT_EQ(gi.dtype(), DType::I32);
  EXPECT_EQ(gi.shape(), (Shape{5}));
  EXPECT_EQ(gi.to_vector<int32_t>(), i);

  // A non-contiguous view is written in logical (C) order.
  const Tensor t = Tensor::from_vector(std::vector<float>{1, 2, 3, 4, 5, 6}, Shape{2, 3}).transpose(0, 1);
  io::write_npy(dir / "t.npy", t);
  EXPECT_EQ(io::read_npy(dir / "t.npy").to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  // No temporary files are left behind.
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.str()), std::filesystem::directory_iterator{}), 3);
}

TEST(Npy, ReadsInt64Float64AndVersion2Headers) {
  TempDir dir("npy64");
  write_bytes(dir / "i8.npy", npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (2, 2), }",
                                       raw(std::vector<int64_t>{3, -1, 511, 100000})));
  const Tensor i8 = io::read_npy(dir / "i8.npy");
  EXPECT_EQ(i8.dtype(), DType::I32);
  EXPECT_EQ(i8.shape(), (Shape{2, 2}));
  EXPECT_EQ(i8.to_vector<int32_t>(), (std::vector<int32_t>{3, -1, 511, 100000}));

  write_bytes(dir / "f8.npy", npy_file("{\"descr\":\"<f8\",\"shape\":(3,),\"fortran_order\":False}",
                                       raw(std::vector<double>{0.5, -2.25, 1e10})));
  EXPECT_EQ(io::read_npy(dir / "f8.npy").to_vector<float>(), (std::vector<float>{0.5f, -2.25f, 1e10f}));

  write_bytes(dir / "v2.npy", npy_file("{'descr': '<i4', 'fortran_order': False, 'shape': (1, 3), }",
                                       raw(std::vector<int32_t>{9, 8, 7}), 2));
  EXPECT_EQ(io::read_npy(dir / "v2.npy").to_vector<int32_t>(), (std::vector<int32_t>{9, 8, 7}));

  write_bytes(dir / "scalar.npy", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", raw(std::vector<float>{4.f})));
  EXPECT_EQ(io::read_npy(dir / "scalar.npy").numel(), 1);
}

TEST(Npy, ErrorsNameTheFileAndTheProblem) {
  TempDir dir("npyerr");
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }";
  const std::string data = raw(std::vector<float>{1, 2, 3, 4});
  const auto check = [&](const std::string& name, const std::string& bytes, const std::vector<std::string>& parts) {
    write_bytes(dir / name, bytes);
    std::vector<std::string> all = {name};
    all.insert(all.end(), parts.begin(), parts.end());
    expect_error([&] { io::read_npy(dir / name); }, all);
  };
  check("magic.npy", "PK\x03\x04 not numpy at all", {"bad magic"});
  check("version.npy", std::string("\x93NUMPY\x04\x00\x10\x00", 10) + std::string(16, ' '), {"unsupported .npy format version 4.0"});
  check("big.npy", npy_file("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }", data), {"unsupported .npy dtype '>f4'"});
  check("f2.npy", npy_file("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", data), {"unsupported .npy dtype '<f2'"});
  check("fortran.npy", npy_file("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", data), {"fortran-order"});
  check("short.npy", npy_file(dict, data.substr(0, 12)), {"truncated .npy data", "[2, 2]", "16 bytes", "12"});
  check("long.npy", npy_file(dict, data + "xxxx"), {"longer than its shape"});
  check("header.npy", npy_file(dict, data).substr(0, 40), {"truncated .npy header"});
  check("noshape.npy", npy_file("{'descr': '<f4', 'fortran_order': False, }", data), {"needs descr, fortran_order and shape"});
  check("badshape.npy", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", data), {"bad shape"});
  // The quoted header stops at the dict: its padding and newline made a two-line error.
  write_bytes(dir / "pad.npy", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }", data));
  EXPECT_EQ(error_of([&] { io::read_npy(dir / "pad.npy"); }),
            dir / "pad.npy" + ": malformed .npy header: bad shape in {'descr': '<f4', 'fortran_order': False, 'shape': (-1, 2), }");
  // A shape whose size overflows wrapped around to a small one ("data longer than its shape").
  check("huge.npy", npy_file("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }", data),
        {"shape [1099511627776, 1099511627776] is too large"});
  check("int64.npy", npy_file("{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }", raw(std::vector<int64_t>{1LL << 40})),
        {"does not fit in int32"});
  expect_error([&] { io::read_npy(dir / "missing.npy"); }, {"missing.npy", "cannot open"});
  expect_error([&] { io::write_npy(dir / "x.npy", Tensor::zeros(Shape{2}, DType::I64)); }, {"x.npy", "only f32 and i32"});
}

}  // namespace
}  // namespace llm::testing
