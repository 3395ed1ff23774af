// The dropout mask, one definition for the CPU and CUDA kernels: whether element i is kept depends
// only on (seed, i), through a counter-based hash, so both backends and any thread or block count
// draw the same mask, and backward regenerates it instead of storing it.
#pragma once
#include <cstdint>

#include "kernels/host_device.h"

namespace llm::dropout_mask {

// splitmix64's finalizer: a bijective 64-bit mix with full avalanche.
LLM_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The per-call key derived from the user's seed.
LLM_HOST_DEVICE uint64_t key(uint64_t seed) { return mix64(seed ^ 0x6A09E667F3BCC909ull); }

// Element i is kept when u(key, i) >= p, u having 24 random bits, uniform on [0, 1).
LLM_HOST_DEVICE bool keep(uint64_t k, int64_t i, float p) {
  const uint64_t h = mix64(k + static_cast<uint64_t>(i) * 0x9E3779B97F4A7C15ull);
  return static_cast<float>(h >> 40) * 0x1.0p-24f >= p;
}

// What a kept element is multiplied by (inverted dropout); p = 1 keeps nothing: no 1/0.
LLM_HOST_DEVICE float keep_scale(float p) { return p < 1.0f ? 1.0f / (1.0f - p) : 0.0f; }

}  // namespace llm::dropout_mask
