#include "engine/generate/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

namespace llm::generate {

void SamplingOptions::validate() const {
  LLM_CHECK(std::isfinite(temperature) && temperature >= 0.f, "sampling: temperature must be 0 (greedy) or positive, got ",
            temperature);
  LLM_CHECK(top_p > 0.f && top_p <= 1.f, "sampling: top_p must be in (0, 1], got ", top_p);
  LLM_CHECK(min_p >= 0.f && min_p <= 1.f, "sampling: min_p must be in [0, 1], got ", min_p);
  LLM_CHECK(repeat_penalty > 0.f, "sampling: repeat_penalty must be positive, got ", repeat_penalty);
  LLM_CHECK(repeat_last_n >= 0, "sampling: repeat_last_n must not be negative, got ", repeat_last_n);
}

Sampler::Sampler(const SamplingOptions& options, uint64_t stream)
    : o_(options), gen_(options.seed ^ (0x9e3779b97f4a7c15ULL * (stream + 1))) {
  o_.validate();
}

int32_t Sampler::sample(const float* logits, int64_t V, const std::vector<int32_t>& history) {
  work_.assign(logits, logits + V);
  if (o_.repeat_penalty != 1.f && o_.repeat_last_n > 0) {
    const size_t from = history.size() > static_cast<size_t>(o_.repeat_last_n) ? history.size() - o_.repeat_last_n : 0;
    const std::unordered_set<int32_t> seen(history.begin() + static_cast<std::ptrdiff_t>(from), history.end());
    for (int32_t t : seen)
      if (t >= 0 && t < V) work_[t] = work_[t] > 0 ? work_[t] / o_.repeat_penalty : work_[t] * o_.repeat_penalty;
  }
  // Greedy: the lowest index among equal maxima, so ties are deterministic.
  if (o_.temperature <= 0.f) return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());

  // Candidates by decreasing logit (index breaks ties), cut to top-k.
  const int64_t k = o_.top_k > 0 ? std::min<int64_t>(o_.top_k, V) : V;
  order_.resize(V);
  for (int64_t i = 0; i < V; ++i) order_[i] = static_cast<int32_t>(i);
  auto better = [&](int32_t a, int32_t b) { return work_[a] > work_[b] || (work_[a] == work_[b] && a < b); };
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), better);
  int64_t n = k;
  // top-p and min-p act on the untempered distribution of the candidates.
  const float top = work_[order_[0]];
  std::vector<double> p(static_cast<size_t>(n));
  double z = 0;
  for (int64_t i = 0; i < n; ++i) z += p[i] = std::exp(static_cast<double>(work_[order_[i]]) - top);
  if (o_.top_p < 1.f) {
    double cum = 0;
    for (int64_t i = 0; i < n; ++i) {
      cum += p[i] / z;
      if (cum >= o_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (o_.min_p > 0.f) {
    int64_t keep = 1;
    while (keep < n && p[keep] >= o_.min_p * p[0]) ++keep;  // p[0] is the largest
    n = keep;
  }
  // Temperature, then one draw.
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += p[i] = std::exp((static_cast<double>(work_[order_[i]]) - top) / o_.temperature);
  double u = static_cast<double>(gen_.uniform()) * total;
  for (int64_t i = 0; i < n; ++i) {
    u -= p[i];
    if (u < 0) return order_[i];
  }
  return order_[n - 1];
}

}  // namespace llm::generate
