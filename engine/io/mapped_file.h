// A whole regular file memory-mapped private and writable (copy-on-write: a caller may change a tensor
// that views it; the file never changes), unmapped when the last holder lets go. Tensors made with
// Tensor::from_blob keep it alive as their owner.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

namespace llm::io {

struct MappedFile {
  void* addr = nullptr;
  size_t size = 0;
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
};

// Maps `path`. A file shorter than min_size is an error: "<path>: truncated <what> (<n> bytes, <why_min>)".
std::shared_ptr<MappedFile> map_file(const std::string& path, const std::string& what, size_t min_size,
                                     const std::string& why_min);

}  // namespace llm::io
