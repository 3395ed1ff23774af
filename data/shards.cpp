#include "data/shards.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/core/error.h"
#include "engine/io/hdf5_file.h"

namespace llm::data {
namespace {

constexpr int32_t kLlmcMagic = 20240520;       // GPT-2 shards: version 1, uint16 tokens
constexpr int32_t kLlmcMagicLlama3 = 20240801;  // LLaMA-3 shards: version 7, uint32 tokens
constexpr int64_t kLlmcHeaderBytes = 256 * sizeof(int32_t);

class H5Shard final : public TokenShard {
 public:
  explicit H5Shard(const std::string& path) : file_(path, io::H5File::Mode::Read) {
    info_.path = path;
    info_.format = "hdf5";
    LLM_CHECK(file_.has_attr("/", "format") && file_.attr_string("/", "format") == "llm-token-shard", path,
              ": not a token shard (root attribute format != \"llm-token-shard\")");
    LLM_CHECK(file_.exists("tokens"), path, ": missing dataset 'tokens'");
    const auto shape = file_.shape("tokens");
    LLM_CHECK(shape.size() == 1, path, ": dataset 'tokens' must be 1-D, has ", shape.size(), " dims");
    const io::H5Type t = file_.dtype("tokens");
    LLM_CHECK(t == io::H5Type::U16 || t == io::H5Type::U32, path, ": dataset 'tokens' has type ",
              io::h5type_name(t), ", expected uint16 or uint32");
    info_.dtype = io::h5type_name(t);
    info_.num_tokens = shape[0];
    const int64_t declared = file_.attr_int("/", "num_tokens");
    LLM_CHECK(declared == shape[0], path, ": attribute num_tokens = ", declared, " but dataset 'tokens' holds ",
              shape[0], " (corrupted shard?)");
    info_.vocab_size = file_.attr_int("/", "vocab_size");
    info_.eot_id = static_cast<int32_t>(file_.attr_int("/", "eot_id"));
    info_.tokenizer_identity = file_.attr_string("/", "tokenizer_identity");
    if (file_.exists("doc_offsets")) info_.doc_offsets = file_.read<int64_t>("doc_offsets");
  }
  void read(int64_t offset, int64_t count, int32_t* out) const override {
    file_.read_range_raw("tokens", io::H5Type::I32, offset, count, out);
  }

 private:
  io::H5File file_;
};

class BinShard final : public TokenShard {
 public:
  explicit BinShard(const std::string& path) {
    info_.path = path;
    info_.format = "llmc-bin";
    fd_ = ::open(path.c_str(), O_RDONLY);
    LLM_CHECK(fd_ >= 0, path, ": cannot open: ", std::strerror(errno));
    int32_t header[256];
    const ssize_t got = ::pread(fd_, header, sizeof header, 0);
    if (got != static_cast<ssize_t>(sizeof header)) {
      ::close(fd_);
      throw Error(path + ": truncated llm.c shard: shorter than its 1024-byte header");
    }
    if (header[0] == kLlmcMagic && header[1] == 1) {
      token_bytes_ = 2;
    } else if (header[0] == kLlmcMagicLlama3 && header[1] == 7) {
      token_bytes_ = 4;
    } else {
      ::close(fd_);
      throw Error(path + ": not an llm.c token shard (magic " + std::to_string(header[0]) + ", version " +
                  std::to_string(header[1]) + "; expected 20240520/1 or 20240801/7)");
    }
    info_.dtype = token_bytes_ == 2 ? "uint16" : "uint32";
    info_.num_tokens = header[2];
    const int64_t want = kLlmcHeaderBytes + info_.num_tokens * token_bytes_;
    const int64_t have = static_cast<int64_t>(std::filesystem::file_size(path));
    if (header[2] < 0 || have != want) {
      ::close(fd_);
      throw Error(path + ": header says " + std::to_string(header[2]) + " tokens (" + std::to_string(want) +
                  " bytes) but the file has " + std::to_string(have) + " bytes (truncated or corrupted)");
    }
  }
  ~BinShard() override { ::close(fd_); }
  BinShard(const BinShard&) = delete;
  BinShard& operator=(const BinShard&) = delete;

  void read(int64_t offset, int64_t count, int32_t* out) const override {
    LLM_CHECK(offset >= 0 && count >= 0 && offset + count <= info_.num_tokens, info_.path, ": range [", offset,
              ", ", offset + count, ") is outside the shard's ", info_.num_tokens, " tokens");
    std::vector<unsigned char> buf(static_cast<size_t>(count * token_bytes_));
    size_t done = 0;
    while (done < buf.size()) {
      const ssize_t n = ::pread(fd_, buf.data() + done, buf.size() - done,
                                kLlmcHeaderBytes + offset * token_bytes_ + static_cast<int64_t>(done));
      LLM_CHECK(n > 0, info_.path, ": read failed: ", n < 0 ? std::strerror(errno) : "unexpected end of file");
      done += static_cast<size_t>(n);
    }
    // The format is little-endian, as is every machine we build for.
    for (int64_t i = 0; i < count; ++i) {
      if (token_bytes_ == 2) {
        uint16_t v;
        std::memcpy(&v, &buf[static_cast<size_t>(i) * 2], 2);
        out[i] = v;
      } else {
        uint32_t v;
        std::memcpy(&v, &buf[static_cast<size_t>(i) * 4], 4);
        out[i] = static_cast<int32_t>(v);
      }
    }
  }

 private:
  int fd_ = -1;
  int64_t token_bytes_ = 2;
};

}  // namespace

std::unique_ptr<TokenShard> TokenShard::open(const std::string& path) {
  LLM_CHECK(std::filesystem::is_regular_file(path), path, ": no such shard file");
  if (io::is_hdf5_file(path)) return std::make_unique<H5Shard>(path);
  return std::make_unique<BinShard>(path);
}

std::vector<int32_t> TokenShard::read_all() const {
  std::vector<int32_t> v(static_cast<size_t>(size()));
  read(0, size(), v.data());
  return v;
}

ShardWriter::ShardWriter(std::string dir, std::string prefix, ShardHeader header, int64_t max_tokens)
    : dir_(std::move(dir)), prefix_(std::move(prefix)), header_(std::move(header)), max_tokens_(max_tokens) {
  LLM_CHECK(max_tokens_ > 0, "ShardWriter: max_tokens must be positive, got ", max_tokens_);
  LLM_CHECK(header_.vocab_size > 0 && header_.vocab_size <= (int64_t(1) << 32), "ShardWriter: bad vocab_size ",
            header_.vocab_size);
  std::filesystem::create_directories(dir_);
}

void ShardWriter::add_document(const std::vector<int32_t>& tokens) {
  bool first = true;
  for (int32_t t : tokens) {
    LLM_CHECK(t >= 0 && t < header_.vocab_size, "ShardWriter: token id ", t, " is outside the vocabulary (size ",
              header_.vocab_size, ")");
    if (static_cast<int64_t>(buffer_.size()) == max_tokens_) flush();
    if (first) doc_offsets_.push_back(static_cast<int64_t>(buffer_.size()));
    first = false;
    buffer_.push_back(static_cast<uint32_t>(t));
  }
  total_tokens_ += static_cast<int64_t>(tokens.size());
  ++total_docs_;
}

void ShardWriter::flush() {
  if (buffer_.empty()) return;
  char num[16];
  std::snprintf(num, sizeof num, "%06zu", files_.size());
  const std::string name = prefix_ + "_" + num + ".h5";
  auto f = io::H5File::create_atomic((std::filesystem::path(dir_) / name).string());
  if (uses_uint16()) {
    std::vector<uint16_t> narrow(buffer_.begin(), buffer_.end());
    f.write("tokens", narrow);
  } else {
    f.write("tokens", buffer_);
  }
  f.write("doc_offsets", doc_offsets_);
  f.set_attr("/", "format", "llm-token-shard");
  f.set_attr("/", "version", int64_t{1});
  f.set_attr("/", "num_tokens", static_cast<int64_t>(buffer_.size()));
  f.set_attr("/", "num_documents", static_cast<int64_t>(doc_offsets_.size()));
  f.set_attr("/", "vocab_size", header_.vocab_size);
  f.set_attr("/", "eot_id", int64_t{header_.eot_id});
  f.set_attr("/", "tokenizer_identity", header_.tokenizer_identity);
  f.commit();
  files_.push_back(name);
  buffer_.clear();
  doc_offsets_.clear();
}

void ShardWriter::finish() { flush(); }

void write_llmc_bin(const std::string& path, const std::vector<int32_t>& tokens) {
  int32_t header[256] = {};
  header[0] = kLlmcMagic;
  header[1] = 1;
  header[2] = static_cast<int32_t>(tokens.size());
  std::vector<uint16_t> narrow(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    LLM_CHECK(tokens[i] >= 0 && tokens[i] < 65536, path, ": token ", tokens[i], " does not fit uint16");
    narrow[i] = static_cast<uint16_t>(tokens[i]);
  }
  std::string bytes(reinterpret_cast<const char*>(header), sizeof header);
  bytes.append(reinterpret_cast<const char*>(narrow.data()), narrow.size() * sizeof(uint16_t));
  io::write_file_atomic(path, bytes);
}

}  // namespace llm::data
