// ZeRO stage 1: AdamW with its state sharded across the ranks of a communicator.
//
// The parameters, in order, form one flat vector of N elements, padded to world·S (S = ceil(N/world)).
// Rank r owns elements [r·S, (r+1)·S): only their AdamW moments live on it, so optimizer memory per
// rank falls as 1/world. A step is:
//   sync_gradients(): reduce-scatter of the flat gradient (average), so each rank holds the averaged
//                     gradient of its shard; returns the global gradient norm (all-reduced);
//   step(lr, scale):  the fused AdamW update on the shard, then an all-gather of the parameters.
// The arithmetic per element is AdamW's, so losses and parameters match plain data parallelism.
// Parameters without a gradient count as zero gradient. Parameters on the CPU (any communicator) or
// on one GPU (the nccl communicator): the flat vector, the shard's gradient and moments then live on
// that device, every copy and the fused AdamW launch go on the engine's stream, and the collectives
// read and write the device buffers directly. state() brings the moments to the host either way.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "engine/dist/communicator.h"
#include "optim/adamw.h"

namespace llm::optim {

class ZeroAdamW {
 public:
  ZeroAdamW(std::vector<std::pair<std::string, Tensor>> named_params, AdamWConfig config, dist::Communicator& comm);

  void zero_grad();
  // Averages the gradients across ranks into this rank's shard; returns the global L2 norm.
  double sync_gradients();
  // Updates this rank's shard from the synced gradient (times grad_scale), then all-gathers the
  // parameters so every rank has all of them.
  void step(float lr, float grad_scale = 1.f);

  int64_t steps() const { return step_; }
  dist::Communicator& communicator() const { return comm_; }
  int64_t shard_size() const { return shard_; }  // elements of optimizer state per moment on this rank
  // The full state (every parameter's moments, gathered from all ranks; a collective: every rank
  // calls it) in AdamW's layout, so checkpoints do not depend on the world size.
  AdamW::State state() const;
  // Takes the full state (as AdamW::set_state checks it) and keeps this rank's shard.
  void set_state(const AdamW::State& state);

 private:
  struct Param {
    std::string name;
    Tensor param;
    int64_t offset;  // first element in the flat vector
    bool decay;
  };
  // Calls fn(param, begin, end) for each parameter's elements [begin, end) inside this rank's
  // shard; `begin - offset` is the position in the parameter, `begin - shard start` in the shard.
  template <typename Fn> void for_each_in_shard(Fn fn) const;

  // The squared L2 norm of this rank's shard of the averaged gradient.
  double shard_sum_squares() const;
  // The fused AdamW update of this rank's shard (in place in the parameters).
  void update_shard(float lr, float grad_scale);

  std::vector<Param> params_;
  AdamWConfig config_;
  dist::Communicator& comm_;
  Device device_ = Device::cpu();  // the parameters' device: every buffer below lives there
  int64_t total_ = 0, shard_ = 0, shard_begin_ = 0;
  Tensor flat_;                    // world·S: gradients before the reduce-scatter, parameters after the gather
  Tensor grad_, m_, v_;            // S each: this rank's averaged gradient and moments
  int64_t step_ = 0;
};

}  // namespace llm::optim
