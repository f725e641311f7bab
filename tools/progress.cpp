// The bar: "epoch 3/64 [#########.........]  45/120  loss 0.53  lr 0.0100  12.3 clips/s  ETA 1:23".
#include "progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>

namespace vidgrad::tools {

std::string format_duration(double seconds) {
  const long s = std::max(0L, std::lround(seconds));
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

bool Progress::is_terminal(std::FILE* f) { return ::isatty(::fileno(f)) == 1; }

Progress::Progress(std::string label, std::int64_t total, std::int64_t log_every, std::FILE* out)
    : label_(std::move(label)), total_(std::max<std::int64_t>(total, 1)), log_every_(std::max<std::int64_t>(log_every, 1)),
      out_(out), tty_(is_terminal(out)), start_(std::chrono::steady_clock::now()) {}

void Progress::update(std::int64_t done, const std::string& info) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double eta = done > 0 ? elapsed / static_cast<double>(done) * static_cast<double>(total_ - done) : 0.0;
  if (tty_) {
    constexpr int kWidth = 24;
    const int filled = static_cast<int>(kWidth * done / total_);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.append(static_cast<std::size_t>(kWidth - filled), '.');
    std::fprintf(out_, "\r\033[K%s [%s] %lld/%lld  %s  ETA %s", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), info.c_str(), format_duration(eta).c_str());
  } else if (done % log_every_ == 0 || done == total_) {
    std::fprintf(out_, "%s %lld/%lld  %s  elapsed %s  ETA %s\n", label_.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), info.c_str(), format_duration(elapsed).c_str(),
                 format_duration(eta).c_str());
  }
  std::fflush(out_);
}

void Progress::finish(const std::string& info) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (tty_) std::fprintf(out_, "\r\033[K");
  std::fprintf(out_, "%s done in %s  %s\n", label_.c_str(), format_duration(elapsed).c_str(), info.c_str());
  std::fflush(out_);
}

}  // namespace vidgrad::tools
