#include "tools/bench_cuda/bench_cuda.h"

namespace llm::bench_cuda {
namespace {
std::vector<const Section*>& registry() {
  static std::vector<const Section*> all;
  return all;
}
}  // namespace

Section::Section(int order_, const char* name_, void (*run_)()) : order(order_), name(name_), run(run_) {
  registry().push_back(this);
}

std::vector<const Section*> sections() {
  auto all = registry();
  std::sort(all.begin(), all.end(), [](const Section* a, const Section* b) { return a->order < b->order; });
  return all;
}
}  // namespace llm::bench_cuda
