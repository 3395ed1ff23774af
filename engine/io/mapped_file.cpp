#include "engine/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/core/error.h"

namespace llm::io {

MappedFile::~MappedFile() {
  if (addr) ::munmap(addr, size);
}

std::shared_ptr<MappedFile> map_file(const std::string& path, const std::string& what, size_t min_size,
                                     const std::string& why_min) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LLM_CHECK(fd >= 0, path, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < min_size) {
    ::close(fd);
    throw Error(path + ": truncated " + what + " (" + std::to_string(size) + " bytes, " + why_min + ")");
  }
  void* addr = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  LLM_CHECK(addr != MAP_FAILED, path, ": cannot memory-map: ", std::strerror(map_errno));
  auto m = std::make_shared<MappedFile>();
  m->addr = addr;
  m->size = size;
  return m;
}

}  // namespace llm::io
