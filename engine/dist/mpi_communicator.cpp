// MPI communicator. MPI collectives have no timeout, so each one is started non-blocking and polled
// against a deadline. When the deadline passes, this rank asks every other rank, on a separate
// communicator, which collective it is in; ranks waiting in the same one answer from their own
// polling loop, so those that stay silent are the ones that died, hung or went elsewhere, and the
// error names them.
#include "engine/dist/mpi_communicator.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "engine/dist/backends.h"

namespace llm::dist::detail {

namespace {
using clock_type = std::chrono::steady_clock;
constexpr int kQueryTag = 1, kReplyTag = 2, kAbortTag = 3;
bool finalize_allowed = true;  // false once a communicator broke: peers may be stuck in MPI

// MPI is initialised once per process and finalized at exit (it cannot be initialised again).
void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  // After a failure peers may be stuck in a collective: MPI_Finalize would wait for them forever.
  if (!finalized && finalize_allowed) MPI_Finalize();
}

MPI_Datatype mpi_type(Elem e) {
  switch (e) {
    case Elem::F32: return MPI_FLOAT;
    case Elem::F64: return MPI_DOUBLE;
    case Elem::I32: return MPI_INT32_T;
    case Elem::I64: return MPI_INT64_T;
    case Elem::Byte: return MPI_BYTE;
  }
  return MPI_BYTE;
}

int checked_count(int64_t count, const char* what) {
  LLM_CHECK(count >= 0 && count <= INT_MAX, what, ": ", count, " elements is more than one MPI call moves (", INT_MAX, ")");
  return static_cast<int>(count);
}

void check_average(Elem e, ReduceOp op) {
  LLM_CHECK(op == ReduceOp::Sum || e == Elem::F32 || e == Elem::F64, "average is only defined for floating-point buffers");
}

// Divides a summed buffer by the world size (MPI has no average).
void finish_average(void* data, int64_t count, Elem e, ReduceOp op, int world) {
  if (op != ReduceOp::Average) return;
  if (e == Elem::F32) {
    const float s = 1.f / static_cast<float>(world);
    float* p = static_cast<float*>(data);
    for (int64_t i = 0; i < count; ++i) p[i] *= s;
  } else {
    const double s = 1.0 / world;
    double* p = static_cast<double*>(data);
    for (int64_t i = 0; i < count; ++i) p[i] *= s;
  }
}

std::string mpi_error_text(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

// An all-reduce in flight. One abandoned unfinished (an exception unwound past it) cannot be
// cancelled portably; the communicator is broken by then, so it is left to process exit.
class MpiRequest final : public Request {
 public:
  MpiRequest(MpiCommunicator& comm, MPI_Request req, int64_t seq, void* data, int64_t count, Elem elem, ReduceOp op)
      : comm_(comm), req_(req), seq_(seq), data_(data), count_(count), elem_(elem), op_(op) {}
  bool test() override {
    if (done_) return true;
    int flag = 0;
    MPI_Test(&req_, &flag, MPI_STATUS_IGNORE);
    if (flag) complete();
    return done_;
  }
  void wait() override {
    if (done_) return;
    comm_.wait(req_, "all_reduce", seq_);
    complete();
  }

 private:
  void complete() {
    done_ = true;
    finish_average(data_, count_, elem_, op_, comm_.world_size());
  }
  MpiCommunicator& comm_;
  MPI_Request req_;
  int64_t seq_;
  void* data_;
  int64_t count_;
  Elem elem_;
  ReduceOp op_;
  bool done_ = false;
};
}  // namespace

MpiCommunicator::MpiCommunicator(double timeout_s) {
  timeout_s_ = timeout_s;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    // Collectives are only ever called from the thread that runs the training loop.
    LLM_CHECK(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS, "MPI_Init failed");
    std::atexit(finalize_at_exit);
  }
  MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
  MPI_Comm_dup(MPI_COMM_WORLD, &control_);
  MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
  MPI_Comm_set_errhandler(control_, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm_, &rank_);
  MPI_Comm_size(comm_, &world_size_);
  MPI_Comm node = MPI_COMM_NULL;
  MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_free(&node);
}

MpiCommunicator::~MpiCommunicator() {
  if (broken_) {
    finalize_allowed = false;
    return;
  }
  MPI_Comm_free(&control_);
  MPI_Comm_free(&comm_);
}

void MpiCommunicator::answer_queries(bool accept_abort) {
  int flag = 0;
  MPI_Status status;
  if (accept_abort && MPI_Iprobe(MPI_ANY_SOURCE, kAbortTag, control_, &flag, &status) == MPI_SUCCESS && flag) {
    // Another rank gave up on the collective this one is waiting in: stop with its diagnosis.
    int len = 0;
    MPI_Get_count(&status, MPI_CHAR, &len);
    std::string why(static_cast<size_t>(std::max(len, 0)), '\0');
    MPI_Recv(why.data(), len, MPI_CHAR, status.MPI_SOURCE, kAbortTag, control_, MPI_STATUS_IGNORE);
    broken_ = true;
    throw Error("rank " + std::to_string(rank_) + ": stopping because " + why);
  }
  for (;;) {
    if (MPI_Iprobe(MPI_ANY_SOURCE, kQueryTag, control_, &flag, &status) != MPI_SUCCESS || !flag) return;
    char query[32];  // the asker's collective number; the answer is ours, whatever it asked
    MPI_Recv(query, sizeof(query), MPI_CHAR, status.MPI_SOURCE, kQueryTag, control_, MPI_STATUS_IGNORE);
    outbox_.push_back(std::to_string(waiting_seq_));
    send_control(status.MPI_SOURCE, kReplyTag, outbox_.back());
  }
}

void MpiCommunicator::send_control(int to, int tag, const std::string& text) {
  MPI_Request r;
  if (MPI_Isend(text.data(), static_cast<int>(text.size()), MPI_CHAR, to, tag, control_, &r) == MPI_SUCCESS)
    MPI_Request_free(&r);  // `text` lives in outbox_ until the communicator goes away
}

void MpiCommunicator::wait(MPI_Request& request, const char* what, int64_t seq) {
  LLM_CHECK(!broken_, what, ": the communicator failed earlier; no more collectives");
  waiting_seq_ = seq;
  const auto start = clock_type::now();
  const auto deadline = start + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(timeout_s_));
  for (int64_t polls = 0;; ++polls) {
    int flag = 0;
    const int rc = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) fail(what, seq, mpi_error_text(rc));
    if (flag) break;
    if (polls % 64 == 0) answer_queries(true);
    if (clock_type::now() > deadline) fail(what, seq, "");
    // MPI's non-blocking collectives advance only inside MPI calls, so keep polling (yielding the
    // core to other processes); sleep between polls only once a rank is clearly late.
    if (clock_type::now() - start < std::chrono::seconds(1)) std::this_thread::yield();
    else std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
  waiting_seq_ = -1;
}

void MpiCommunicator::fail(const char* what, int64_t seq, const std::string& cause) {
  broken_ = true;
  // Ask everyone which collective they are in; those waiting in this one answer from their loop.
  std::vector<int64_t> where(static_cast<size_t>(world_size_), -2);  // -2: no answer
  where[static_cast<size_t>(rank_)] = seq;
  outbox_.push_back(std::to_string(seq));
  for (int r = 0; r < world_size_; ++r)
    if (r != rank_) send_control(r, kQueryTag, outbox_.back());
  const double grace = std::clamp(0.05 * timeout_s_, 1.0, 10.0);
  const auto grace_end = clock_type::now() + std::chrono::duration_cast<clock_type::duration>(std::chrono::duration<double>(grace));
  int answered = 1;
  while (answered < world_size_ && clock_type::now() < grace_end) {
    answer_queries(false);  // others that timed out ask too
    int flag = 0;
    MPI_Status status;
    if (MPI_Iprobe(MPI_ANY_SOURCE, kReplyTag, control_, &flag, &status) == MPI_SUCCESS && flag) {
      char text[32] = {};
      MPI_Recv(text, sizeof(text) - 1, MPI_CHAR, status.MPI_SOURCE, kReplyTag, control_, MPI_STATUS_IGNORE);
      const int64_t theirs = std::atoll(text);
      if (where[static_cast<size_t>(status.MPI_SOURCE)] == -2) ++answered;
      where[static_cast<size_t>(status.MPI_SOURCE)] = theirs;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  std::string missing, elsewhere;
  for (int r = 0; r < world_size_; ++r) {
    const int64_t w = where[static_cast<size_t>(r)];
    if (w == -2) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    else if (w != seq) elsewhere += (elsewhere.empty() ? "" : ", ") + std::to_string(r) + (w < 0 ? " (in no collective)" : " (in #" + std::to_string(w) + ")");
  }
  std::string msg = "rank " + std::to_string(rank_) + ": " + what + " #" + std::to_string(seq) + " ";
  msg += cause.empty() ? "did not complete within " + std::to_string(static_cast<long>(timeout_s_)) + " s (dist.timeout_s)"
                       : "failed: " + cause;
  if (!missing.empty()) msg += "; no answer from rank " + missing + " (dead or hung)";
  if (!elsewhere.empty()) msg += "; rank " + elsewhere + " elsewhere";
  if (missing.empty() && elsewhere.empty()) msg += "; every rank answered, so the collective itself is stuck";
  // Tell the ranks that answered, so they stop now with this diagnosis instead of at their own deadline.
  outbox_.push_back(msg);
  std::vector<MPI_Request> sends;
  for (int r = 0; r < world_size_; ++r) {
    if (r == rank_ || where[static_cast<size_t>(r)] == -2) continue;
    MPI_Request req;
    if (MPI_Isend(outbox_.back().data(), static_cast<int>(msg.size()), MPI_CHAR, r, kAbortTag, control_, &req) == MPI_SUCCESS)
      sends.push_back(req);
  }
  const auto flush_end = clock_type::now() + std::chrono::seconds(1);
  for (int done = 0; !done && !sends.empty() && clock_type::now() < flush_end;) {
    MPI_Testall(static_cast<int>(sends.size()), sends.data(), &done, MPI_STATUSES_IGNORE);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  throw Error(msg);
}

std::unique_ptr<Request> MpiCommunicator::all_reduce_async(void* data, int64_t count, Elem elem, ReduceOp op) {
  LLM_CHECK(!broken_, "all_reduce: the communicator failed earlier; no more collectives");
  check_average(elem, op);
  MPI_Request req;
  const int64_t seq = next_seq();
  const int rc = MPI_Iallreduce(MPI_IN_PLACE, data, checked_count(count, "all_reduce"), mpi_type(elem), MPI_SUM, comm_, &req);
  if (rc != MPI_SUCCESS) fail("all_reduce", seq, mpi_error_text(rc));
  return std::make_unique<MpiRequest>(*this, req, seq, data, count, elem, op);
}

void MpiCommunicator::reduce_scatter(const void* send, void* recv, int64_t recv_count, Elem elem, ReduceOp op) {
  LLM_CHECK(!broken_, "reduce_scatter: the communicator failed earlier; no more collectives");
  check_average(elem, op);
  MPI_Request req;
  const int64_t seq = next_seq();
  const int rc = MPI_Ireduce_scatter_block(send, recv, checked_count(recv_count, "reduce_scatter"), mpi_type(elem), MPI_SUM,
                                           comm_, &req);
  if (rc != MPI_SUCCESS) fail("reduce_scatter", seq, mpi_error_text(rc));
  wait(req, "reduce_scatter", seq);
  finish_average(recv, recv_count, elem, op, world_size_);
}

void MpiCommunicator::all_gather(const void* send, void* recv, int64_t send_count, Elem elem) {
  LLM_CHECK(!broken_, "all_gather: the communicator failed earlier; no more collectives");
  MPI_Request req;
  const int64_t seq = next_seq();
  const int n = checked_count(send_count, "all_gather");
  const int rc = MPI_Iallgather(send, n, mpi_type(elem), recv, n, mpi_type(elem), comm_, &req);
  if (rc != MPI_SUCCESS) fail("all_gather", seq, mpi_error_text(rc));
  wait(req, "all_gather", seq);
}

void MpiCommunicator::broadcast(void* data, int64_t count, Elem elem, int root) {
  LLM_CHECK(!broken_, "broadcast: the communicator failed earlier; no more collectives");
  LLM_CHECK(root >= 0 && root < world_size_, "broadcast: root ", root, " is outside a world of ", world_size_);
  MPI_Request req;
  const int64_t seq = next_seq();
  const int rc = MPI_Ibcast(data, checked_count(count, "broadcast"), mpi_type(elem), root, comm_, &req);
  if (rc != MPI_SUCCESS) fail("broadcast", seq, mpi_error_text(rc));
  wait(req, "broadcast", seq);
}

void MpiCommunicator::barrier() {
  LLM_CHECK(!broken_, "barrier: the communicator failed earlier; no more collectives");
  MPI_Request req;
  const int64_t seq = next_seq();
  const int rc = MPI_Ibarrier(comm_, &req);
  if (rc != MPI_SUCCESS) fail("barrier", seq, mpi_error_text(rc));
  wait(req, "barrier", seq);
}

std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s) {
  return std::make_unique<MpiCommunicator>(timeout_s);
}

}  // namespace llm::dist::detail

namespace llm::dist {
void abort_world(int exit_code) {
  int initialized = 0, finalized = 0, world = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  if (world > 1) MPI_Abort(MPI_COMM_WORLD, exit_code);
}
}  // namespace llm::dist
