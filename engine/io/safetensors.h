// safetensors files (Hugging Face): an 8-byte little-endian header length, a JSON header mapping each
// tensor name to {dtype, shape, data_offsets}, then the raw data. Reading memory-maps the file and
// checks the header against the file before any tensor is touched; f32 tensors wrap the mapping
// without a copy, f16/bf16 are converted to f32. Writing is atomic (temporary file, fsync, rename).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/io/mapped_file.h"

namespace llm::io {

// Element types a safetensors file may store for us ("F32", "F16", "BF16").
enum class StoredType { F32, F16, BF16 };
const char* stored_type_name(StoredType t);

class SafetensorsFile {
 public:
  struct Entry {
    StoredType dtype = StoredType::F32;
    std::vector<int64_t> shape;
    size_t begin = 0, end = 0;  // byte offsets into the data section
  };

  // Maps the file and validates the header; every error names the file (and the tensor).
  explicit SafetensorsFile(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensor names, sorted ("__metadata__" is not a tensor).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return entries_.count(name) != 0; }
  const Entry& entry(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // The tensor as f32: f32 data wraps the mapping (the tensor keeps it alive), others are converted.
  Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  std::shared_ptr<MappedFile> map_;
  const uint8_t* data_ = nullptr;  // start of the data section
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

// Every tensor of a file, by name.
std::map<std::string, Tensor> read_safetensors(const std::string& path);

// Writes the tensors (any CPU float dtype; converted to `stored`) in the given order, with the
// header padded with spaces to a multiple of 8 bytes, atomically. Names must be unique.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       StoredType stored = StoredType::F32, const std::map<std::string, std::string>& metadata = {});

}  // namespace llm::io
