// Internal: the MPI communicator, also the bootstrap and host-buffer path of the NCCL one.
#pragma once
#include <mpi.h>

#include <chrono>
#include <deque>
#include <memory>
#include <string>

#include "engine/dist/communicator.h"

namespace llm::dist::detail {

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s);
  ~MpiCommunicator() override;
  std::string backend() const override { return "mpi"; }

  std::unique_ptr<Request> all_reduce_async(void* data, int64_t count, Elem elem, ReduceOp op) override;
  void reduce_scatter(const void* send, void* recv, int64_t recv_count, Elem elem, ReduceOp op) override;
  void all_gather(const void* send, void* recv, int64_t send_count, Elem elem) override;
  void broadcast(void* data, int64_t count, Elem elem, int root) override;
  void barrier() override;

  // Waits for `request` of collective number `seq` (named `what` in errors) against the deadline,
  // answering the other ranks' presence queries meanwhile. Throws naming the ranks that are missing.
  void wait(MPI_Request& request, const char* what, int64_t seq);
  // For the NCCL communicator, which runs its collectives on a stream but numbers them here and
  // polls the same control channel while waiting: the next collective number, the polling, and the
  // failure (diagnosis of the missing ranks, then llm::Error).
  int64_t next_seq() { return ++seq_; }
  void poll_control(int64_t waiting_seq) {
    waiting_seq_ = waiting_seq;
    answer_queries(true);
  }
  [[noreturn]] void fail(const char* what, int64_t seq, const std::string& cause);

 private:
  // Replies to presence queries; with accept_abort, throws when another rank announced it gave up.
  void answer_queries(bool accept_abort);
  void send_control(int to, int tag, const std::string& text);

  MPI_Comm comm_ = MPI_COMM_NULL;     // the collectives
  MPI_Comm control_ = MPI_COMM_NULL;  // presence queries when a collective is late
  int64_t seq_ = 0;                   // collectives started so far (the one waited on, in messages)
  int64_t waiting_seq_ = -1;          // the collective this rank is waiting in, -1 when none
  std::deque<std::string> outbox_;    // control messages in flight (MPI needs their buffers alive)
};

}  // namespace llm::dist::detail
