#include "kernels/cpu/parallel.h"

#include <omp.h>

namespace llm::cpu {

namespace {
const int kDefaultThreads = omp_get_max_threads();
}

int num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) { omp_set_num_threads(n > 0 ? n : kDefaultThreads); }

}  // namespace llm::cpu
