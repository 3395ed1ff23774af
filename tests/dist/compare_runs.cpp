// dist_compare_runs REF_DIR OTHER_DIR [--rtol 1e-5] [--moments-rtol 1e-4]: checks that two llm-train
// runs are the same run. Every training loss OTHER's metrics.jsonl records must match REF's at the
// same step, and the newest checkpoints of both (same step) must hold the same weights, each tensor
// within rtol of its largest magnitude, and the same AdamW moments within moments-rtol (looser: they
// are built from squared gradients, so summation-order rounding weighs more — 1 rank x 8 against
// 1 rank x 4 x 2 accumulation already differs by ~4e-5 there). Prints what it compared; exits 1 on
// a mismatch, 2 on bad input.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/train/checkpoint.h"

namespace {
using namespace llm;

std::map<int64_t, double> losses(const std::string& dir) {
  std::ifstream in(dir + "/metrics.jsonl");
  LLM_CHECK(in.good(), dir, "/metrics.jsonl: cannot read");
  std::map<int64_t, double> out;
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) out[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return out;
}

// max |a - b| / max |a| over a tensor.
double rel_diff(const Tensor& a, const Tensor& b) {
  const std::vector<float> x = a.to_vector<float>(), y = b.to_vector<float>();
  LLM_CHECK(x.size() == y.size(), "tensor sizes differ");
  double diff = 0, scale = 1e-12;
  for (size_t i = 0; i < x.size(); ++i) {
    diff = std::max(diff, std::fabs(static_cast<double>(x[i]) - y[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(x[i])));
  }
  return diff / scale;
}

int compare(const std::string& ref_dir, const std::string& other_dir, double rtol, double moments_rtol) {
  const std::map<int64_t, double> ref = losses(ref_dir), other = losses(other_dir);
  LLM_CHECK(!other.empty(), other_dir, "/metrics.jsonl: no training losses");
  double worst_loss = 0;
  for (const auto& [step, loss] : other) {
    auto it = ref.find(step);
    LLM_CHECK(it != ref.end(), ref_dir, ": has no loss for step ", step);
    const double d = std::fabs(loss - it->second) / std::fabs(it->second);
    worst_loss = std::max(worst_loss, d);
    if (d > rtol) std::printf("step %lld: loss %.9g vs %.9g (relative %.3g)\n", static_cast<long long>(step), loss, it->second, d);
  }
  const std::vector<std::string> rc = train::list_checkpoints(ref_dir), oc = train::list_checkpoints(other_dir);
  LLM_CHECK(!rc.empty() && !oc.empty(), "no checkpoint in ", rc.empty() ? ref_dir : other_dir);
  const train::Checkpoint a = train::load_checkpoint(rc.back()), b = train::load_checkpoint(oc.back());
  LLM_CHECK(a.step == b.step, "newest checkpoints are at different steps: ", a.step, " and ", b.step);
  LLM_CHECK(a.optimizer.step == b.optimizer.step, "optimizer step counts differ");
  int tensors = 0;
  // The worst relative difference over the tensors of one kind; prints those beyond tol.
  auto check = [&](const std::vector<std::pair<std::string, Tensor>>& x, const std::vector<std::pair<std::string, Tensor>>& y,
                   const char* what, double tol) {
    double worst = 0;
    std::map<std::string, Tensor> by_name(y.begin(), y.end());
    LLM_CHECK(x.size() == y.size(), what, ": ", x.size(), " vs ", y.size(), " tensors");
    for (const auto& [name, t] : x) {
      auto it = by_name.find(name);
      LLM_CHECK(it != by_name.end(), what, ": no tensor ", name);
      const double d = rel_diff(t, it->second);
      worst = std::max(worst, d);
      ++tensors;
      if (d > tol) std::printf("%s %s: relative difference %.3g\n", what, name.c_str(), d);
    }
    return worst;
  };
  const double weights = check(a.weights, b.weights, "weight", rtol);
  const double moments = std::max(check(a.optimizer.m, b.optimizer.m, "adam m", moments_rtol),
                                  check(a.optimizer.v, b.optimizer.v, "adam v", moments_rtol));
  std::printf("%s vs %s: %zu losses (worst relative %.2g), %d tensors at step %lld (weights worst relative %.2g, "
              "moments %.2g)\n",
              other_dir.c_str(), ref_dir.c_str(), other.size(), worst_loss, tensors, static_cast<long long>(a.step), weights,
              moments);
  return worst_loss <= rtol && weights <= rtol && moments <= moments_rtol ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> dirs;
  double rtol = 1e-5, moments_rtol = 1e-4;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--rtol" && i + 1 < argc) rtol = std::atof(argv[++i]);
    else if (a == "--moments-rtol" && i + 1 < argc) moments_rtol = std::atof(argv[++i]);
    else dirs.push_back(a);
  }
  if (dirs.size() != 2) {
    std::fprintf(stderr, "usage: dist_compare_runs REF_DIR OTHER_DIR [--rtol 1e-5] [--moments-rtol 1e-4]\n");
    return 2;
  }
  try {
    return compare(dirs[0], dirs[1], rtol, moments_rtol);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
