// The wgmma switch is plain host code: the emulator builds the real one.
#include "kernels/cuda/gemm_wgmma_switch.cu"
