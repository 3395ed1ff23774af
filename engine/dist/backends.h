// Internal: constructors of the optional backends, defined only when they are built in.
#pragma once
#include <memory>

#include "engine/dist/communicator.h"

namespace llm::dist::detail {
#ifdef LLM_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_communicator(double timeout_s);
#endif
#ifdef LLM_HAVE_NCCL
std::unique_ptr<Communicator> make_nccl_communicator(double timeout_s);
#endif
}  // namespace llm::dist::detail
