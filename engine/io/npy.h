// NumPy .npy files (format versions 1.0, 2.0 and 3.0): a magic string, a Python-dict header
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } and the raw C-order data. We read
// little-endian float32/float64/int32/int64 arrays and write float32/int32 ones, for exchanging
// token ids and logits with Python (numpy.load / numpy.save).
#pragma once
#include <string>

#include "engine/core/tensor.h"

namespace llm::io {

// Reads an array: '<f4' → F32, '<f8' → F32 (rounded), '<i4' → I32, '<i8' → I32 (each value must fit,
// which token ids always do). Errors name the file: bad magic, unsupported version or dtype
// (big-endian included), fortran order, a malformed header, or data shorter or longer than the shape.
Tensor read_npy(const std::string& path);

// The .npy header (version 1.0, padded so the data starts on a 64-byte boundary) for `descr` and
// `shape`, as numpy writes it.
std::string npy_header(const std::string& descr, const Shape& shape);

// Writes an F32 ('<f4') or I32 ('<i4') tensor (any device, any strides) atomically (temporary
// sibling, fsync, rename).
void write_npy(const std::string& path, const Tensor& t);

}  // namespace llm::io
