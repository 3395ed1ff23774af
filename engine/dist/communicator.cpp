#include "engine/dist/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "engine/dist/backends.h"

namespace llm::dist {

size_t elem_size(Elem e) {
  switch (e) {
    case Elem::F32: case Elem::I32: return 4;
    case Elem::F64: case Elem::I64: return 8;
    case Elem::Byte: return 1;
  }
  return 1;
}

Elem elem_of(DType dtype) {
  switch (dtype) {
    case DType::F32: return Elem::F32;
    case DType::I32: return Elem::I32;
    case DType::I64: return Elem::I64;
    case DType::U8: return Elem::Byte;
    default: throw Error(std::string("collectives do not support ") + dtype_name(dtype) + " tensors");
  }
}

namespace {
void check_collective_tensor(const Communicator& c, const Tensor& t, const char* what) {
  LLM_CHECK(t.is_contiguous(), what, ": the tensor must be contiguous");
  LLM_CHECK(t.device().is_cpu() || c.backend() != "mpi", what, ": the mpi communicator takes CPU tensors, not ",
            t.device().str());
}
}  // namespace

void Communicator::all_reduce(Tensor& t, ReduceOp op) {
  check_collective_tensor(*this, t, "all_reduce");
  all_reduce(t.raw_data(), t.numel(), elem_of(t.dtype()), op);
}

void Communicator::broadcast(Tensor& t, int root) {
  check_collective_tensor(*this, t, "broadcast");
  broadcast(t.raw_data(), t.numel(), elem_of(t.dtype()), root);
}

namespace {
// The first of `names` that is set, as an int, or -1.
int env_int(std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (const char* v = std::getenv(n); v && *v) return std::atoi(v);
  return -1;
}

class DoneRequest final : public Request {
 public:
  bool test() override { return true; }
  void wait() override {}
};

// World size 1: a reduction of one contribution is that contribution.
class SingleProcess final : public Communicator {
 public:
  explicit SingleProcess(double timeout_s) { timeout_s_ = timeout_s; }
  std::string backend() const override { return "single"; }
  std::unique_ptr<Request> all_reduce_async(void*, int64_t, Elem, ReduceOp) override {
    return std::make_unique<DoneRequest>();
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, Elem elem, ReduceOp) override {
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(recv_count) * elem_size(elem));
  }
  void all_gather(const void* send, void* recv, int64_t send_count, Elem elem) override {
    if (send != recv) std::memmove(recv, send, static_cast<size_t>(send_count) * elem_size(elem));
  }
  void broadcast(void*, int64_t, Elem, int root) override {
    LLM_CHECK(root == 0, "broadcast: root ", root, " is outside a world of 1");
  }
  void barrier() override {}
};
}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo info;
  const int size = env_int({"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"});
  if (size < 1) return info;
  info.launched = true;
  info.world_size = size;
  info.rank = std::max(0, env_int({"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"}));
  info.local_rank = std::max(0, env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}));
  return info;
}

std::string available_backends() {
  std::string s = "single";
#ifdef LLM_HAVE_MPI
  s += ", mpi";
#endif
#ifdef LLM_HAVE_NCCL
  s += ", nccl";
#endif
  return s;
}

#ifndef LLM_HAVE_MPI
void abort_world(int) {}
#endif

std::unique_ptr<Communicator> make_communicator(const std::string& backend, double timeout_s) {
  LLM_CHECK(timeout_s > 0, "dist.timeout_s: must be positive, got ", timeout_s);
  LLM_CHECK(timeout_s <= 1e9, "dist.timeout_s: at most 1e9 seconds, got ", timeout_s);  // deadlines in ns overflowed past it
  std::string b = backend;
  if (b == "auto") {
    const LaunchInfo launch = detect_launch();
#ifdef LLM_HAVE_MPI
    b = launch.launched ? "mpi" : "single";
#else
    LLM_CHECK(!launch.launched || launch.world_size == 1, "this process was started as rank ", launch.rank, " of ",
              launch.world_size, " but llm was built without MPI (install libopenmpi-dev and rebuild)");
    b = "single";
#endif
  }
  if (b == "single") {
    const LaunchInfo launch = detect_launch();
    LLM_CHECK(launch.world_size == 1, "dist.backend single: but the launcher started ", launch.world_size,
              " processes (use mpi or nccl)");
    return std::make_unique<SingleProcess>(timeout_s);
  }
#ifdef LLM_HAVE_MPI
  if (b == "mpi") return detail::make_mpi_communicator(timeout_s);
#endif
#ifdef LLM_HAVE_NCCL
  if (b == "nccl") return detail::make_nccl_communicator(timeout_s);
#endif
  LLM_CHECK(b == "mpi" || b == "nccl", "unknown communicator backend '", b, "' (expected auto, single, mpi or nccl)");
  throw Error("the " + b + " communicator is not built in (this build has: " + available_backends() + ")");
}

}  // namespace llm::dist
