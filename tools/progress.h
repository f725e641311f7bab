// Progress reporting: a single updating bar with ETA on a terminal, plain log lines
// (every `log_every` updates and at the end) when output is a file or pipe.
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace vidgrad::tools {

class Progress {
 public:
  Progress(std::string label, std::int64_t total, std::int64_t log_every, std::FILE* out = stdout);
  // `done` of `total` finished; `info` is appended (loss, lr, clips/s, ...).
  void update(std::int64_t done, const std::string& info);
  void finish(const std::string& info);
  static bool is_terminal(std::FILE* f);

 private:
  std::string label_;
  std::int64_t total_, log_every_;
  std::FILE* out_;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
};

std::string format_duration(double seconds);  // "1:02:03" or "2:03"

}  // namespace vidgrad::tools
