// Communicator: the collectives data-parallel training needs (all-reduce, reduce-scatter, all-gather,
// broadcast, barrier) behind one interface, with three backends:
//   single  one process; every collective is a copy or nothing. No dependencies.
//   mpi     MPI (OpenMPI) on CPU buffers. Built when LLM_HAVE_MPI.
//   nccl    NCCL on CUDA buffers, one GPU per process chosen by the local rank, its unique id
//           broadcast over MPI. Built when LLM_HAVE_NCCL.
// Rank, world size and local rank come from the launcher (mpirun, srun); without one the world is 1.
//
// Every collective must be entered by every rank in the same order. A collective that does not
// complete within timeout_s (a rank died, hung, or took another code path) throws llm::Error naming
// the ranks that did not arrive; the communicator is unusable afterwards (see broken()).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "engine/core/tensor.h"

namespace llm::dist {

enum class ReduceOp { Sum, Average };
// Element types a collective moves. Average is only defined for F32 and F64.
enum class Elem { F32, F64, I32, I64, Byte };
size_t elem_size(Elem e);
template <typename T> constexpr Elem elem_of();
template <> constexpr Elem elem_of<float>() { return Elem::F32; }
template <> constexpr Elem elem_of<double>() { return Elem::F64; }
template <> constexpr Elem elem_of<int32_t>() { return Elem::I32; }
template <> constexpr Elem elem_of<int64_t>() { return Elem::I64; }
template <> constexpr Elem elem_of<uint8_t>() { return Elem::Byte; }
Elem elem_of(DType dtype);  // F32, I32, I64, U8; others throw

// A collective in flight. wait() returns when it completed (throws on timeout); test() polls.
class Request {
 public:
  virtual ~Request() = default;
  virtual bool test() = 0;
  virtual void wait() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual std::string backend() const = 0;  // "single", "mpi", "nccl"
  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes of this node
  double timeout_s() const { return timeout_s_; }
  // True after a collective failed or timed out: the others may be stuck, so no more collectives.
  bool broken() const { return broken_; }

  // Raw buffers (host memory for single and mpi, device memory for nccl), `count` elements each.
  // all_reduce works in place. reduce_scatter reads world_size * recv_count elements and leaves
  // rank r the reduction of elements [r * recv_count, (r + 1) * recv_count). all_gather writes
  // world_size * send_count elements, rank r's contribution at r * send_count.
  virtual std::unique_ptr<Request> all_reduce_async(void* data, int64_t count, Elem elem, ReduceOp op) = 0;
  virtual void reduce_scatter(const void* send, void* recv, int64_t recv_count, Elem elem, ReduceOp op) = 0;
  virtual void all_gather(const void* send, void* recv, int64_t send_count, Elem elem) = 0;
  virtual void broadcast(void* data, int64_t count, Elem elem, int root) = 0;
  virtual void barrier() = 0;

  void all_reduce(void* data, int64_t count, Elem elem, ReduceOp op) { all_reduce_async(data, count, elem, op)->wait(); }
  // Conveniences: a contiguous tensor (on the backend's device), one host scalar, a host vector.
  void all_reduce(Tensor& t, ReduceOp op);
  void broadcast(Tensor& t, int root);
  template <typename T>
  T all_reduce_value(T value, ReduceOp op) {
    all_reduce(&value, 1, elem_of<T>(), op);
    return value;
  }
  template <typename Vec>
  void broadcast_vector(Vec& v, int root);  // resizes v on the receivers

 protected:
  int rank_ = 0, world_size_ = 1, local_rank_ = 0;
  double timeout_s_ = 300;
  bool broken_ = false;
};

// What the environment says about the launch: set by mpirun (OMPI_COMM_WORLD_*), Slurm's srun
// (SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID: set for srun steps, not for the batch script
// itself) or a PMI launcher (PMI_RANK / PMI_SIZE).
struct LaunchInfo {
  bool launched = false;  // a launcher started this process
  int rank = 0, world_size = 1, local_rank = 0;
};
LaunchInfo detect_launch();

// "auto" (mpi when a launcher started the process, else single), "single", "mpi" or "nccl".
// timeout_s bounds every collective (default 5 minutes). The MPI and NCCL backends initialise MPI
// on first use and finalize it at exit. Throws naming the backend when it was not built in.
std::unique_ptr<Communicator> make_communicator(const std::string& backend = "auto", double timeout_s = 300);
// The backends this build has, e.g. "single, mpi".
std::string available_backends();
// For a tool that stops on an error: ends every process of a multi-process MPI launch (MPI_Abort),
// since the others may be waiting for this one in a collective. Returns when there are none.
void abort_world(int exit_code);

template <typename Vec>
void Communicator::broadcast_vector(Vec& v, int root) {
  int64_t n = static_cast<int64_t>(v.size());
  broadcast(&n, 1, Elem::I64, root);
  v.resize(static_cast<size_t>(n));
  if (n > 0) broadcast(v.data(), n * static_cast<int64_t>(sizeof(v[0])), Elem::Byte, root);
}

}  // namespace llm::dist
