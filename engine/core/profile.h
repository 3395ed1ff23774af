// Where a training step's time goes, per operation (`llm-bench train --profile`, `llm-bench cuda`).
//
// While a profile runs, the end of every differentiable op's forward (autograd::record), of every
// backward node (autograd::run_backward) and of a few named steps outside the graph (gradient norm,
// optimizer, gradient all-reduce) is marked on the device's timeline: the host clock on the CPU, an
// event on the device's stream on CUDA, so marking never waits for the device. The time from one
// mark to the next is charged to the later one. On a device kept busy that is the op's own time;
// where the host falls behind, the device's idle wait lands on the op after it. Ops run without
// autograd (inference, or inputs that need no gradient) are charged to the next mark.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "engine/core/dtype.h"

namespace llm::profile {

// Starts a profile of work on `device` (discarding any earlier one); the time until the first
// mark is not counted.
void start(Device device);
bool running();
// Charges the time since the previous mark to `what` (no-op unless a profile is running).
void mark(const std::string& what);

struct Row {
  std::string name;
  int64_t calls = 0;
  double seconds = 0;
};
// Ends the profile (waiting for the device's work to finish): one row per name, the most time first.
std::vector<Row> stop();

// The rows as an aligned table with each row's share of the total, `steps` profiled steps averaged.
std::string format(const std::vector<Row>& rows, int steps, size_t max_rows = 25);

}  // namespace llm::profile
