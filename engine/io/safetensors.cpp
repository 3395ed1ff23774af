#include "engine/io/safetensors.h"


#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "engine/core/error.h"
#include "engine/io/json_brief.h"
#include "engine/io/hdf5_file.h"
#include "engine/io/mapped_file.h"
#include "kernels/cpu/elementwise.h"

namespace llm::io {

using json = nlohmann::json;

const char* stored_type_name(StoredType t) {
  switch (t) {
    case StoredType::F32: return "F32";
    case StoredType::F16: return "F16";
    case StoredType::BF16: return "BF16";
  }
  return "?";
}

namespace {
size_t stored_size(StoredType t) { return t == StoredType::F32 ? 4 : 2; }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}
}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path)
    : path_(path), map_(map_file(path, "safetensors file", 8, "shorter than the 8-byte header length")) {
  const size_t file_size = map_->size;
  void* addr = map_->addr;
  const auto* bytes = static_cast<const uint8_t*>(addr);

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  LLM_CHECK(header_len <= file_size - 8, path, ": header length ", header_len, " runs past the end of the file (",
            file_size, " bytes): truncated or not a safetensors file");
  const size_t data_size = file_size - 8 - static_cast<size_t>(header_len);
  data_ = bytes + 8 + header_len;

  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(bytes + 8), reinterpret_cast<const char*>(bytes + 8 + header_len));
  } catch (const json::exception& e) {
    throw Error(path + ": safetensors header is not valid JSON: " + e.what());
  }
  LLM_CHECK(header.is_object(), path, ": safetensors header is not a JSON object");

  std::vector<std::pair<size_t, size_t>> spans;  // (begin, end) of every non-empty tensor
  std::map<size_t, std::string> span_owner;
  for (const auto& [name, info] : header.items()) {
    if (name == "__metadata__") {
      if (info.is_object())
        for (const auto& [k, v] : info.items())
          if (v.is_string()) metadata_[k] = v.get<std::string>();
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    LLM_CHECK(info.is_object() && info.contains("dtype") && info["dtype"].is_string() && info.contains("shape") &&
                  info["shape"].is_array() && info.contains("data_offsets") && info["data_offsets"].is_array() &&
                  info["data_offsets"].size() == 2,
              where, ": header entry needs dtype, shape and data_offsets [begin, end]");
    Entry e;
    const std::string dtype = info["dtype"].get<std::string>();
    if (dtype == "F32") e.dtype = StoredType::F32;
    else if (dtype == "F16") e.dtype = StoredType::F16;
    else if (dtype == "BF16") e.dtype = StoredType::BF16;
    else throw Error(where + ": dtype " + dtype + " is not supported (F32, F16 and BF16 are)");
    uint64_t numel = 1;
    for (const json& d : info["shape"]) {
      LLM_CHECK(d.is_number_unsigned(), where, ": shape must hold non-negative integers, got ", json_brief(info["shape"]));
      const uint64_t v = d.get<uint64_t>();
      LLM_CHECK(v < (uint64_t{1} << 40) && !__builtin_mul_overflow(numel, v, &numel), where, ": shape ",
                json_brief(info["shape"]), " is too large");
      e.shape.push_back(static_cast<int64_t>(v));
    }
    LLM_CHECK(e.shape.size() <= static_cast<size_t>(kMaxDims), where, ": ", e.shape.size(),
              " dimensions (at most ", kMaxDims, " are supported)");
    const json& off = info["data_offsets"];
    LLM_CHECK(off[0].is_number_unsigned() && off[1].is_number_unsigned(), where,
              ": data_offsets must be non-negative integers, got ", json_brief(off));
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    LLM_CHECK(begin <= end, where, ": data_offsets ", json_brief(off), " end before they begin");
    LLM_CHECK(end <= data_size, where, ": data_offsets ", json_brief(off), " run past the end of the data (", data_size,
              " bytes): the file is truncated or the header is inconsistent");
    LLM_CHECK(end - begin == numel * stored_size(e.dtype), where, ": holds ", end - begin, " bytes but ", dtype, " ",
              shape_str(e.shape), " needs ", numel * stored_size(e.dtype));
    e.begin = static_cast<size_t>(begin);
    e.end = static_cast<size_t>(end);
    if (e.end > e.begin) {
      spans.emplace_back(e.begin, e.end);
      span_owner[e.begin] = name;
    }
    entries_.emplace(name, std::move(e));
  }
  std::sort(spans.begin(), spans.end());
  for (size_t i = 1; i < spans.size(); ++i)
    LLM_CHECK(spans[i].first >= spans[i - 1].second, path, ": tensors '", span_owner[spans[i - 1].first], "' and '",
              span_owner[spans[i].first], "' overlap in the data section");
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : entries_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  LLM_CHECK(it != entries_.end(), path_, ": no tensor '", name, "'");
  return it->second;
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const Entry& e = entry(name);
  const Shape shape(e.shape);
  const uint8_t* src = data_ + e.begin;
  const int64_t n = shape.numel();
  if (e.dtype == StoredType::F32 && reinterpret_cast<uintptr_t>(src) % alignof(float) == 0)
    return Tensor::from_blob(const_cast<uint8_t*>(src), shape, DType::F32, Device::cpu(), map_);
  Tensor out = Tensor::empty(shape, DType::F32);
  float* dst = out.data<float>();
  if (e.dtype == StoredType::F32) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    // 2-byte values may sit at odd addresses in a file with an unpadded header: copy them first.
    std::vector<uint16_t> tmp(static_cast<size_t>(n));
    if (n) std::memcpy(tmp.data(), src, tmp.size() * sizeof(uint16_t));
    if (e.dtype == StoredType::F16) cpu::f16_to_f32(n, tmp.data(), dst);
    else cpu::bf16_to_f32(n, tmp.data(), dst);
  }
  return out;
}

std::map<std::string, Tensor> read_safetensors(const std::string& path) {
  const SafetensorsFile file(path);
  std::map<std::string, Tensor> out;
  for (const std::string& name : file.names()) out.emplace(name, file.tensor(name));
  return out;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       StoredType stored, const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> seen;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    LLM_CHECK(name != "__metadata__" && seen.insert(name).second, path, ": duplicate or reserved tensor name '", name, "'");
    LLM_CHECK(t.defined() && is_floating(t.dtype()), path, ": tensor '", name, "' must be a defined float tensor");
    const size_t nbytes = static_cast<size_t>(t.numel()) * stored_size(stored);
    header[name] = {{"dtype", stored_type_name(stored)}, {"shape", t.shape().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  write_file_atomic(path, [&](std::ostream& out) {
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& kv : tensors) {
      const Tensor& t = kv.second;
      const Tensor c = t.to(Device::cpu()).to(DType::F32).contiguous();
      const int64_t n = c.numel();
      if (stored == StoredType::F32) {
        out.write(reinterpret_cast<const char*>(c.data<float>()), static_cast<std::streamsize>(n * sizeof(float)));
        continue;
      }
      std::vector<uint16_t> half(static_cast<size_t>(n));
      if (stored == StoredType::F16) cpu::f32_to_f16(n, c.data<float>(), half.data());
      else cpu::f32_to_bf16(n, c.data<float>(), half.data());
      out.write(reinterpret_cast<const char*>(half.data()), static_cast<std::streamsize>(n * sizeof(uint16_t)));
    }
  });
}

}  // namespace llm::io
