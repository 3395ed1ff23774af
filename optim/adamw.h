// AdamW with decoupled weight decay (torch.optim.AdamW), fused per-parameter updates, global-norm
// gradient clipping folded into the update, and learning-rate schedules.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"

namespace llm::optim {

struct AdamWConfig {
  float lr = 3e-4f;
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;
  // Which parameters get weight decay. Default (null): those with 2 or more dimensions — matrices and
  // embeddings — and not biases or norm weights, as nanoGPT and llm.c.
  std::function<bool(const std::string& name, const Tensor& param)> decay_filter;
};

// Whether `param` gets weight decay under `config` (its decay_filter, or 2+ dimensions by default).
bool uses_weight_decay(const AdamWConfig& config, const std::string& name, const Tensor& param);

class AdamW {
 public:
  AdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig config);

  // One update with learning rate lr from each parameter's .grad (parameters without a gradient are
  // skipped), gradients first multiplied by grad_scale. Increments the step count. Parameters on a
  // GPU (all on one device) are updated by one launch of the fused kernel, moments kept there.
  void step(float lr, float grad_scale = 1.f);
  // Drops every parameter's .grad.
  void zero_grad();

  int64_t steps() const { return step_; }
  const AdamWConfig& config() const { return config_; }
  // Names of the parameters that get weight decay.
  std::vector<std::string> decayed() const;

  // Optimizer state for checkpoints: the step count and, per parameter name, the two moments (on the
  // parameters' device; set_state copies from any device).
  struct State {
    int64_t step = 0;
    std::vector<std::pair<std::string, Tensor>> m, v;
  };
  State state() const;
  void set_state(const State& state);  // names and shapes must match; errors name the tensor

 private:
  struct Slot {
    std::string name;
    Tensor param, m, v;
    bool decay;
  };
  void step_cuda(float lr, float grad_scale);
  std::vector<Slot> slots_;
  AdamWConfig config_;
  int64_t step_ = 0;
};

// The global L2 norm of the gradients (parameters without one count as zero), in double. Gradients
// on a GPU are reduced there in one deterministic fp32 pass and the sum read back (one sync per call).
double grad_norm(const std::vector<Tensor>& params);

// The factor that brings a gradient of norm `norm` to at most max_norm (1 when already within, or
// when max_norm <= 0: clipping off). Pass it to AdamW::step as grad_scale.
float clip_scale(double norm, double max_norm);

// Learning-rate schedules. `step` counts from 0.
struct Schedule {
  enum class Kind { Constant, Cosine, Linear };
  Kind kind = Kind::Cosine;
  float lr = 3e-4f;           // peak
  float min_lr = 0.f;         // the floor reached at total_steps (cosine, linear)
  int64_t warmup_steps = 0;   // linear ramp from lr/warmup to lr
  int64_t total_steps = 0;    // decay horizon (cosine, linear)
  float at(int64_t step) const;
  // "constant", "cosine" or "linear"; throws naming the value otherwise.
  static Kind parse(const std::string& name);
};

}  // namespace llm::optim
