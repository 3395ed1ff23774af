#include "engine/io/npy.h"

#include <cctype>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <vector>

#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"

namespace llm::io {
namespace {

constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes, then major and minor version

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LLM_CHECK(f.good(), path, ": cannot open the .npy file");
  std::ostringstream ss;
  ss << f.rdbuf();
  LLM_CHECK(!f.bad(), path, ": read failed");
  return ss.str();
}

// A cursor over the header's Python dict literal; every error names the file.
class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& text) : path_(path), s_(text) {}

  void skip_space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool peek(char c) {
    skip_space();
    return i_ < s_.size() && s_[i_] == c;
  }
  void expect(char c) {
    LLM_CHECK(peek(c), path_, ": malformed .npy header: expected '", c, "' at offset ", i_, " in ", s_);
    ++i_;
  }
  std::string string_literal() {
    skip_space();
    LLM_CHECK(i_ < s_.size() && (s_[i_] == '\'' || s_[i_] == '"'), path_, ": malformed .npy header: expected a string in ", s_);
    const char quote = s_[i_++];
    const size_t end = s_.find(quote, i_);
    LLM_CHECK(end != std::string::npos, path_, ": malformed .npy header: unterminated string in ", s_);
    std::string out = s_.substr(i_, end - i_);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    skip_space();
    if (s_.compare(i_, 4, "True") == 0) return i_ += 4, true;
    if (s_.compare(i_, 5, "False") == 0) return i_ += 5, false;
    throw Error(detail::concat(path_, ": malformed .npy header: fortran_order must be True or False in ", s_));
  }
  std::vector<int64_t> shape_tuple() {
    expect('(');
    std::vector<int64_t> dims;
    while (!peek(')')) {
      skip_space();
      size_t digits = 0;
      int64_t v = 0;
      while (i_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[i_]))) {
        LLM_CHECK(v <= (std::numeric_limits<int64_t>::max() - 9) / 10, path_, ": .npy shape dimension too large");
        v = v * 10 + (s_[i_++] - '0');
        ++digits;
      }
      if (i_ < s_.size() && s_[i_] == 'L') ++i_;  // Python 2 longs
      LLM_CHECK(digits > 0, path_, ": malformed .npy header: bad shape in ", s_);
      dims.push_back(v);
      if (!peek(')')) expect(',');
    }
    expect(')');
    return dims;
  }
  bool at_end() {
    skip_space();
    return i_ >= s_.size();
  }

 private:
  const std::string& path_;
  const std::string& s_;
  size_t i_ = 0;
};

struct Header {
  std::string descr;
  bool fortran = false;
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

Header parse_header(const std::string& path, const std::string& bytes) {
  LLM_CHECK(bytes.size() >= 10 && std::memcmp(bytes.data(), kMagic, 6) == 0, path, ": not a .npy file (bad magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  LLM_CHECK(major >= 1 && major <= 3, path, ": unsupported .npy format version ", major, ".",
            static_cast<int>(static_cast<unsigned char>(bytes[7])));
  size_t header_len = 0, prefix = 0;
  const auto byte = [&](size_t i) { return static_cast<size_t>(static_cast<unsigned char>(bytes[i])); };
  if (major == 1) {
    header_len = byte(8) | byte(9) << 8;
    prefix = 10;
  } else {
    LLM_CHECK(bytes.size() >= 12, path, ": truncated .npy header");
    header_len = byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
    prefix = 12;
  }
  LLM_CHECK(bytes.size() >= prefix + header_len, path, ": truncated .npy header (", header_len, " bytes announced, ",
            bytes.size() - prefix, " present)");
  // Without numpy's padding and newline, which would end the error messages quoting it; other control
  // bytes (a corrupt header) become spaces so that an error stays one line.
  std::string text = bytes.substr(prefix, header_len);
  text.erase(text.find_last_not_of(" \t\r\n") + 1);
  for (char& c : text)
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  HeaderParser p(path, text);
  Header h;
  bool have_descr = false, have_fortran = false, have_shape = false;
  p.expect('{');
  while (!p.peek('}')) {
    const std::string key = p.string_literal();
    p.expect(':');
    if (key == "descr") h.descr = p.string_literal(), have_descr = true;
    else if (key == "fortran_order") h.fortran = p.boolean(), have_fortran = true;
    else if (key == "shape") h.shape = p.shape_tuple(), have_shape = true;
    else throw Error(detail::concat(path, ": malformed .npy header: unknown key '", key, "'"));
    if (!p.peek('}')) p.expect(',');
  }
  p.expect('}');
  LLM_CHECK(p.at_end(), path, ": malformed .npy header: text after the dict in ", text);
  LLM_CHECK(have_descr && have_fortran && have_shape, path, ": malformed .npy header: needs descr, fortran_order and shape, got ", text);
  h.data_offset = prefix + header_len;
  return h;
}

}  // namespace

Tensor read_npy(const std::string& path) {
  const std::string bytes = read_all(path);
  const Header h = parse_header(path, bytes);
  LLM_CHECK(!h.fortran, path, ": fortran-order .npy arrays are not supported (save a C-order array: np.ascontiguousarray)");
  size_t item = 0;
  if (h.descr == "<f4" || h.descr == "<i4") item = 4;
  else if (h.descr == "<f8" || h.descr == "<i8") item = 8;
  else
    throw Error(detail::concat(path, ": unsupported .npy dtype '", h.descr,
                               "' (expected little-endian float32/float64/int32/int64: <f4 <f8 <i4 <i8)"));
  LLM_CHECK(static_cast<int>(h.shape.size()) <= kMaxDims, path, ": .npy array has ", h.shape.size(),
            " dimensions; at most ", kMaxDims, " are supported");
  // The byte count, checked for overflow: a corrupt shape ((2**40, 2**40)) wrapped around to a small one.
  size_t want = item;
  for (int64_t d : h.shape)
    LLM_CHECK(!__builtin_mul_overflow(want, static_cast<size_t>(d), &want), path, ": .npy shape ", Shape(h.shape).str(),
              " is too large (corrupt header?)");
  const Shape shape(h.shape);
  const int64_t n = shape.numel();
  const size_t have = bytes.size() - h.data_offset;
  LLM_CHECK(have >= want, path, ": truncated .npy data: shape ", shape.str(), " needs ", want, " bytes, the file has ", have);
  LLM_CHECK(have == want, path, ": .npy data longer than its shape ", shape.str(), " (", have, " bytes, expected ", want, ")");
  const char* src = bytes.data() + h.data_offset;
  const bool is_float = h.descr[1] == 'f';
  Tensor out = Tensor::empty(shape, is_float ? DType::F32 : DType::I32);
  if (item == 4) {
    std::memcpy(out.raw_data(), src, want);
  } else if (is_float) {
    float* dst = out.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      double v;
      std::memcpy(&v, src + i * 8, 8);
      dst[i] = static_cast<float>(v);
    }
  } else {
    int32_t* dst = out.data<int32_t>();
    for (int64_t i = 0; i < n; ++i) {
      int64_t v;
      std::memcpy(&v, src + i * 8, 8);
      LLM_CHECK(v >= std::numeric_limits<int32_t>::min() && v <= std::numeric_limits<int32_t>::max(), path,
                ": int64 value ", v, " at flat index ", i, " does not fit in int32");
      dst[i] = static_cast<int32_t>(v);
    }
  }
  return out;
}

std::string npy_header(const std::string& descr, const Shape& shape) {
  std::string dict = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': (";
  for (int d = 0; d < shape.ndim(); ++d) dict += std::to_string(shape[d]) + (shape.ndim() == 1 || d + 1 < shape.ndim() ? ", " : "");
  if (shape.ndim() == 1) dict.pop_back();  // "(5,)"
  dict += "), }";
  // magic (6) + version (2) + length (2) + dict + spaces + '\n', a multiple of 64 bytes
  size_t total = 10 + dict.size() + 1;
  total = (total + 63) / 64 * 64;
  LLM_CHECK(total - 10 <= 0xFFFF, "npy_header: shape too long for a version 1.0 header");
  dict.append(total - 10 - dict.size() - 1, ' ');
  dict += '\n';
  std::string out(kMagic, 6);
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(dict.size() & 0xFF);
  out += static_cast<char>(dict.size() >> 8);
  return out + dict;
}

void write_npy(const std::string& path, const Tensor& t) {
  LLM_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::I32, path, ": write_npy: only f32 and i32 tensors, got ",
            dtype_name(t.dtype()));
  const Tensor c = t.to(Device::cpu()).contiguous();
  const std::string header = npy_header(t.dtype() == DType::F32 ? "<f4" : "<i4", c.shape());
  write_file_atomic(path, [&](std::ostream& out) {
    out.write(header.data(), static_cast<std::streamsize>(header.size()));
    out.write(static_cast<const char*>(c.raw_data()), static_cast<std::streamsize>(c.nbytes()));
  });
}

}  // namespace llm::io
