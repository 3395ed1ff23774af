// RoPE's rotation frequencies, one definition for the CPU and CUDA kernels: pair i of a head of D
// dimensions turns by position · f_i, f_i = theta^(-2i/D), optionally rescaled the way Hugging Face's
// `rope_scaling` describes a context extension:
//   linear (position interpolation): every f_i / factor;
//   llama3 (Llama 3.1 and 3.2): wavelengths 2π/f_i shorter than original_max_position / high_freq_factor
//     are kept, those longer than original_max_position / low_freq_factor are divided by factor, and
//     those between blend the two, linearly in original_max_position / wavelength.
#pragma once
#include <cmath>
#include <cstdint>

#include "kernels/host_device.h"

namespace llm {

enum class RopeScalingType : int32_t { kNone, kLinear, kLlama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  float factor = 1.f;
  float low_freq_factor = 1.f;              // llama3
  float high_freq_factor = 4.f;             // llama3
  float original_max_position = 8192.f;     // llama3: the context the model was first trained for
};

struct RopeFrequencies {
  float theta = 10000.f;
  RopeScaling scaling;
  // From a bare theta, so that rope(x, positions, 10000.f) keeps reading as it always did.
  RopeFrequencies(float theta_ = 10000.f, RopeScaling scaling_ = {}) : theta(theta_), scaling(scaling_) {}  // NOLINT
};

// f_i in double: position · f_i reaches ~3e4 radians, where an fp32 angle would be off by ~1e-3.
LLM_HOST_DEVICE double rope_frequency(const RopeFrequencies& r, int64_t i, int64_t D) {
  const double f = pow(double(r.theta), -2.0 * double(i) / double(D));
  const RopeScaling& s = r.scaling;
  if (s.type == RopeScalingType::kLinear) return f / double(s.factor);
  if (s.type != RopeScalingType::kLlama3) return f;
  const double wavelength = 2.0 * 3.14159265358979323846 / f;
  const double original = double(s.original_max_position);
  if (wavelength < original / double(s.high_freq_factor)) return f;
  if (wavelength > original / double(s.low_freq_factor)) return f / double(s.factor);
  const double smooth = (original / wavelength - double(s.low_freq_factor)) /
                        (double(s.high_freq_factor) - double(s.low_freq_factor));
  return (1.0 - smooth) * f / double(s.factor) + smooth * f;
}

}  // namespace llm
