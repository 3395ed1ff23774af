#include "engine/core/profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>

#include "engine/core/error.h"
#ifdef LLM_HAVE_CUDA
#include "engine/core/cuda_context.h"
#endif

namespace llm::profile {

namespace {
using Clock = std::chrono::steady_clock;

// Marks in order: each a name and, on the CPU, the host time, on CUDA, an event on the stream.
// Events are created once and reused by later profiles (creating them allocates no device memory).
struct State {
  std::mutex mutex;
  std::atomic<bool> running{false};
  Device device = Device::cpu();
  std::vector<std::string> names;
  std::vector<Clock::time_point> times;
#ifdef LLM_HAVE_CUDA
  std::vector<cudaEvent_t> events;  // events[i] belongs to mark i; the pool only grows
#endif
};
State& state() {
  static auto* s = new State();  // never destroyed: the CUDA context may be gone at exit
  return *s;
}

#ifdef LLM_HAVE_CUDA
void check(cudaError_t err, const char* what) {
  LLM_CHECK(err == cudaSuccess, "CUDA error in profile (", what, "): ", cudaGetErrorString(err));
}
#endif

// Appends a mark; s.mutex is held.
void add_mark(State& s, const std::string& what) {
  s.names.push_back(what);
  if (!s.device.is_cuda()) {
    s.times.push_back(Clock::now());
    return;
  }
#ifdef LLM_HAVE_CUDA
  const size_t i = s.names.size() - 1;
  if (i == s.events.size()) {
    s.events.emplace_back();
    check(cudaEventCreate(&s.events.back()), "cudaEventCreate");
  }
  check(cudaEventRecord(s.events[i], cuda_context::stream(s.device)), "cudaEventRecord");
#endif
}
}  // namespace

void start(Device device) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
#ifndef LLM_HAVE_CUDA
  LLM_CHECK(!device.is_cuda(), "profile: this build has no CUDA");
#endif
  s.running = true;
  s.device = device;
  s.names.clear();
  s.times.clear();
  add_mark(s, "");  // the origin
}

bool running() { return state().running; }

void mark(const std::string& what) {
  State& s = state();
  if (!s.running) return;
  std::lock_guard<std::mutex> lock(s.mutex);
  if (s.running) add_mark(s, what);
}

std::vector<Row> stop() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  LLM_CHECK(s.running, "profile::stop: no profile is running");
  s.running = false;
  std::vector<double> seconds(s.names.size(), 0.0);
  if (s.device.is_cuda()) {
#ifdef LLM_HAVE_CUDA
    cuda_context::synchronize(s.device.index);
    for (size_t i = 1; i < s.names.size(); ++i) {
      float ms = 0.f;
      check(cudaEventElapsedTime(&ms, s.events[i - 1], s.events[i]), "cudaEventElapsedTime");
      seconds[i] = ms * 1e-3;
    }
#endif
  } else {
    for (size_t i = 1; i < s.names.size(); ++i) seconds[i] = std::chrono::duration<double>(s.times[i] - s.times[i - 1]).count();
  }
  std::map<std::string, Row> by_name;
  for (size_t i = 1; i < s.names.size(); ++i) {
    Row& r = by_name[s.names[i]];
    r.name = s.names[i];
    r.calls += 1;
    r.seconds += seconds[i];
  }
  std::vector<Row> rows;
  for (auto& [name, row] : by_name) rows.push_back(row);
  std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) { return a.seconds > b.seconds; });
  return rows;
}

std::string format(const std::vector<Row>& rows, int steps, size_t max_rows) {
  double total = 0;
  for (const Row& r : rows) total += r.seconds;
  const double per = steps > 0 ? 1.0 / steps : 1.0;
  std::string out;
  char line[256];
  std::snprintf(line, sizeof(line), "  %-32s %10s %12s %7s\n", "op", "calls/step", "ms/step", "share");
  out += line;
  double shown = 0;
  for (size_t i = 0; i < rows.size() && i < max_rows; ++i) {
    const Row& r = rows[i];
    shown += r.seconds;
    std::snprintf(line, sizeof(line), "  %-32s %10.1f %12.3f %6.1f%%\n", r.name.c_str(), r.calls * per,
                  r.seconds * per * 1e3, total > 0 ? 100.0 * r.seconds / total : 0.0);
    out += line;
  }
  if (rows.size() > max_rows) {
    std::snprintf(line, sizeof(line), "  %-32s %10s %12.3f %6.1f%%\n", "(the rest)", "", (total - shown) * per * 1e3,
                  total > 0 ? 100.0 * (total - shown) / total : 0.0);
    out += line;
  }
  std::snprintf(line, sizeof(line), "  %-32s %10s %12.3f\n", "total", "", total * per * 1e3);
  out += line;
  return out;
}

}  // namespace llm::profile
