// NCCL communicator: collectives on CUDA buffers, one GPU per process (local rank modulo the GPUs
// this node shows). MPI starts it (rank, world, the NCCL unique id from rank 0), carries host-buffer
// collectives and barriers, and numbers every collective so a late one is diagnosed as in the MPI
// communicator: NCCL work is polled through a CUDA event against the deadline, and on timeout the
// NCCL communicator is aborted and the MPI control channel names the ranks that did not arrive.
//
// Ordering: a collective runs on the communicator's own stream, after an event recorded on the
// engine's stream (engine/core/cuda_context.h) when it is issued, so it reads what the kernels queued
// before it wrote (gradients, packed buckets) without a host sync, while later engine work (the rest
// of backward) overlaps it. Its result is used only after wait(), which returns once the collective
// finished. A buffer handed to all_reduce_async must therefore stay allocated until wait(): the
// caching allocator would otherwise give it to the next kernel while NCCL still reads it.
#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>

#include "engine/core/cuda_context.h"
#include "engine/dist/backends.h"
#include "engine/dist/mpi_communicator.h"

namespace llm::dist::detail {

namespace {
using clock_type = std::chrono::steady_clock;

void check_cuda(cudaError_t err, const char* what) {
  LLM_CHECK(err == cudaSuccess, "NCCL communicator: ", what, ": ", cudaGetErrorString(err));
}

ncclDataType_t nccl_type(Elem e) {
  switch (e) {
    case Elem::F32: return ncclFloat32;
    case Elem::F64: return ncclFloat64;
    case Elem::I32: return ncclInt32;
    case Elem::I64: return ncclInt64;
    case Elem::Byte: return ncclUint8;
  }
  return ncclUint8;
}

bool on_device(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();  // a plain host pointer on older runtimes
    return false;
  }
  return attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged;
}

class NcclCommunicator;

class NcclRequest final : public Request {
 public:
  NcclRequest(NcclCommunicator& comm, cudaEvent_t event, int64_t seq) : comm_(comm), event_(event), seq_(seq) {}
  ~NcclRequest() override { cudaEventDestroy(event_); }
  bool test() override;
  void wait() override;

 private:
  NcclCommunicator& comm_;
  cudaEvent_t event_;
  int64_t seq_;
  bool done_ = false;
};

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(double timeout_s) : boot_(timeout_s) {
    timeout_s_ = timeout_s;
    rank_ = boot_.rank();
    world_size_ = boot_.world_size();
    local_rank_ = boot_.local_rank();
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    LLM_CHECK(devices > 0, "NCCL communicator: rank ", rank_, " sees no CUDA device");
    device_ = local_rank_ % devices;
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaEventCreateWithFlags(&inputs_ready_, cudaEventDisableTiming), "cudaEventCreate");
    ncclUniqueId id{};
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    boot_.broadcast(&id, sizeof(id), Elem::Byte, 0);
    check_nccl(ncclCommInitRank(&comm_, world_size_, id, rank_), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    // After a failure (here or announced by another rank over MPI) work may be stuck: abort it.
    if (comm_) (broken_ || boot_.broken()) ? ncclCommAbort(comm_) : ncclCommDestroy(comm_);
    if (inputs_ready_) cudaEventDestroy(inputs_ready_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  std::string backend() const override { return "nccl"; }

  std::unique_ptr<Request> all_reduce_async(void* data, int64_t count, Elem elem, ReduceOp op) override {
    if (!on_device(data)) return boot_.all_reduce_async(data, count, elem, op);
    check_usable("all_reduce");
    const int64_t seq = boot_.next_seq();
    check_nccl(ncclAllReduce(data, data, static_cast<size_t>(count), nccl_type(elem), nccl_op(op), comm_, stream_), "ncclAllReduce");
    return std::make_unique<NcclRequest>(*this, record(), seq);
  }
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, Elem elem, ReduceOp op) override {
    if (!on_device(recv)) return boot_.reduce_scatter(send, recv, recv_count, elem, op);
    check_usable("reduce_scatter");
    const int64_t seq = boot_.next_seq();
    check_nccl(ncclReduceScatter(send, recv, static_cast<size_t>(recv_count), nccl_type(elem), nccl_op(op), comm_, stream_),
               "ncclReduceScatter");
    NcclRequest(*this, record(), seq).wait();
  }
  void all_gather(const void* send, void* recv, int64_t send_count, Elem elem) override {
    if (!on_device(recv)) return boot_.all_gather(send, recv, send_count, elem);
    check_usable("all_gather");
    const int64_t seq = boot_.next_seq();
    check_nccl(ncclAllGather(send, recv, static_cast<size_t>(send_count), nccl_type(elem), comm_, stream_), "ncclAllGather");
    NcclRequest(*this, record(), seq).wait();
  }
  void broadcast(void* data, int64_t count, Elem elem, int root) override {
    if (!on_device(data)) return boot_.broadcast(data, count, elem, root);
    check_usable("broadcast");
    LLM_CHECK(root >= 0 && root < world_size_, "broadcast: root ", root, " is outside a world of ", world_size_);
    const int64_t seq = boot_.next_seq();
    check_nccl(ncclBroadcast(data, data, static_cast<size_t>(count), nccl_type(elem), root, comm_, stream_), "ncclBroadcast");
    NcclRequest(*this, record(), seq).wait();
  }
  void barrier() override { boot_.barrier(); }

  // Polls `event` until it completes, answering the other ranks' queries; on timeout or an NCCL
  // error, aborts NCCL and fails with the MPI diagnosis of who is missing.
  void wait(cudaEvent_t event, int64_t seq) {
    const auto start = clock_type::now();
    const auto deadline = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(timeout_s_));
    for (int64_t polls = 0;; ++polls) {
      const cudaError_t q = cudaEventQuery(event);
      if (q == cudaSuccess) return;
      if (q != cudaErrorNotReady) give_up(seq, cudaGetErrorString(q));
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess) give_up(seq, ncclGetErrorString(async));
      if (polls % 64 == 0) boot_.poll_control(seq);
      if (clock_type::now() > deadline) give_up(seq, "");
      if (clock_type::now() - start < std::chrono::seconds(1)) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

 private:
  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::Sum ? ncclSum : ncclAvg; }
  void check_nccl(ncclResult_t r, const char* what) {
    LLM_CHECK(r == ncclSuccess, "NCCL communicator (rank ", rank_, "): ", what, ": ", ncclGetErrorString(r));
  }
  // Orders the next collective after the work already queued on the engine's stream (which made its
  // input; being a blocking stream, it is itself ordered after legacy default-stream work) without
  // making later engine work wait for the collective: the overlap.
  void check_usable(const char* what) {
    LLM_CHECK(!broken_, what, ": the communicator failed earlier; no more collectives");
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_cuda(cudaEventRecord(inputs_ready_, cuda_context::stream(device_)), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(stream_, inputs_ready_, 0), "cudaStreamWaitEvent");
  }
  cudaEvent_t record() {
    cudaEvent_t event;
    check_cuda(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate");
    check_cuda(cudaEventRecord(event, stream_), "cudaEventRecord");
    return event;
  }
  [[noreturn]] void give_up(int64_t seq, const std::string& cause) {
    broken_ = true;
    ncclCommAbort(comm_);  // frees this rank's GPU from the stuck kernel
    comm_ = nullptr;
    boot_.fail("NCCL collective", seq, cause);
  }

  MpiCommunicator boot_;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t inputs_ready_ = nullptr;
  ncclComm_t comm_ = nullptr;
};

bool NcclRequest::test() {
  if (!done_) done_ = cudaEventQuery(event_) == cudaSuccess;
  return done_;
}

void NcclRequest::wait() {
  if (done_) return;
  comm_.wait(event_, seq_);
  done_ = true;
}
}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(double timeout_s) {
  return std::make_unique<NcclCommunicator>(timeout_s);
}

}  // namespace llm::dist::detail
