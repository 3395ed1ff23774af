// The fused-kernel variant switch is plain host code: the emulator builds the real one.
#include "kernels/cuda/fused_variant.cu"
