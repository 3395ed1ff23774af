// DataParallel: averages gradients across ranks, in buckets started during backward.
//
// Each rank runs the same model on its own slice of the batch. Parameters are grouped, in reverse
// registration order (roughly the order backward finishes them), into buckets of about bucket_mb.
// After sync_next_backward(), the grad-ready hook of each parameter counts it in; a bucket whose
// gradients are all final is copied into a flat buffer and its all-reduce (average) starts at once,
// overlapping the rest of backward. finish() waits for every bucket and writes the averages back
// into each .grad. Buckets start in index order on every rank, so the collectives always match.
//
// Use per optimizer step:
//   optimizer.zero_grad();
//   for each micro-batch: if last, dp.sync_next_backward(); loss.backward();
//   dp.finish();              // every .grad is now the average over ranks
//   optimizer.step(...);
// With the single-process communicator every call returns at once (a world of one launched by
// mpirun still runs the buckets through its communicator: the GPU check runs them so). A parameter
// without a gradient on some rank contributes zeros (and gets the averaged gradient). Parameters may
// live on the CPU (mpi communicator) or on the GPU (nccl): there the buckets are device buffers,
// packed and unpacked on the engine's stream, and each all-reduce starts as soon as its bucket is
// packed while backward goes on queueing kernels (see nccl_communicator.cpp for the ordering).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "engine/core/tensor.h"
#include "engine/dist/communicator.h"

namespace llm::dist {

class DataParallel {
 public:
  DataParallel(Communicator& comm, const std::vector<std::pair<std::string, Tensor>>& named_params, double bucket_mb = 25);
  ~DataParallel();
  DataParallel(const DataParallel&) = delete;
  DataParallel& operator=(const DataParallel&) = delete;

  // The next backward completes this step's gradients: average them as they become final.
  void sync_next_backward();
  // Waits for every bucket (starting those no hook started); each .grad then holds the average.
  void finish();

  Communicator& communicator() const { return comm_; }
  int num_buckets() const;
  // Seconds the last finish() waited for all-reduces: the communication backward did not hide.
  double last_wait_seconds() const;

 private:
  struct State;
  Communicator& comm_;
  std::shared_ptr<State> state_;  // the hooks hold it weakly: they may outlive this object and then do nothing
};

// Copies root's values of `params` to every rank (all ranks start from the same weights).
void broadcast_parameters(Communicator& comm, const std::vector<Tensor>& params, int root = 0);

}  // namespace llm::dist
