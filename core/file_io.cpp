// POSIX file I/O for checkpoints.
#include "vidgrad/core/file_io.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "vidgrad/core/error.h"

namespace vidgrad {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  VG_CHECK(in.good(), "read_file: cannot open '" << path << "': " << std::strerror(errno));
  std::ostringstream os;
  os << in.rdbuf();
  VG_CHECK(!in.bad(), "read_file: error reading '" << path << "'");
  return os.str();
}

namespace {

void write_all(int fd, const std::string& bytes, const std::string& path) {
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    VG_CHECK(n > 0, "write_file_atomic: writing '" << path << "' failed: " << std::strerror(errno));
    done += static_cast<std::size_t>(n);
  }
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes, const std::function<void()>& before_rename) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  VG_CHECK(fd >= 0, "write_file_atomic: cannot create '" << tmp << "': " << std::strerror(errno));
  try {
    write_all(fd, bytes, tmp);
    VG_CHECK(::fsync(fd) == 0, "write_file_atomic: fsync of '" << tmp << "' failed: " << std::strerror(errno));
    VG_CHECK(::close(fd) == 0, "write_file_atomic: close of '" << tmp << "' failed: " << std::strerror(errno));
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  try {
    if (before_rename) before_rename();
    VG_CHECK(::rename(tmp.c_str(), path.c_str()) == 0,
             "write_file_atomic: renaming '" << tmp << "' to '" << path << "' failed: " << std::strerror(errno));
  } catch (...) {
    ::unlink(tmp.c_str());
    throw;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {  // persist the rename itself
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace vidgrad
