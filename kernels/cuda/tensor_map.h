// Tensor maps for the TMA (Hopper's Tensor Memory Accelerator): the host side of the kernels that
// load their tiles with cp.async.bulk.tensor (gemm_wgmma.cu, attention_wgmma.cu).
#pragma once
#include <cuda.h>  // CUtensorMap, a type only: the driver is reached through the runtime, not linked

#include <cstdint>

namespace llm::cuda::detail {

// Whether the driver offers cuTensorMapEncodeTiled.
bool tensor_maps_available();

// The map of a bf16 tensor at `base` with `rank` (≤ 5) dimensions, innermost first: dims[i]
// elements, dimension i ≥ 1 strides[i - 1] bytes apart, read in boxes of box[i] elements. The
// box is 64 elements (one 128-byte row) wide and 128-byte swizzled: chunk c of box row r lands at
// chunk c ^ (r % 8) (wgmma's K-major swizzled layout in a 1024-byte aligned tile, ptx.cuh).
// Elements outside the tensor read as zeros. False where the TMA cannot describe the tensor
// (unaligned base or strides, sizes out of range, no driver support); the map is then unusable.
bool encode_bf16_map(CUtensorMap* map, const void* base, int rank, const uint64_t* dims, const uint64_t* strides,
                     const uint32_t* box);

}  // namespace llm::cuda::detail
