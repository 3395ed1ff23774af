// Element types and devices.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

namespace llm {

enum class DType : uint8_t { F32, F16, BF16, I32, I64, U16, U32, U8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
bool is_floating(DType t);

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::F32; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::I32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::I64; };
template <> struct dtype_of<uint32_t> { static constexpr DType value = DType::U32; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::U8; };
// bf16 and f16 share uint16_t storage, so uint16_t maps to U16 and those are reached through casts.
template <> struct dtype_of<uint16_t> { static constexpr DType value = DType::U16; };

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int index = 0) { return {DeviceType::CUDA, index}; }
  bool is_cpu() const { return type == DeviceType::CPU; }
  bool is_cuda() const { return type == DeviceType::CUDA; }
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

}  // namespace llm
