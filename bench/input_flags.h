// The flags conv3d_bench and batch_norm_bench share: --threads=N (vidgrad's thread count)
// and the input, --batch=B --frames=T --size=S.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "vidgrad/core/parallel.h"

namespace vidgrad::bench {

struct InputFlags {
  std::int64_t batch, frames, size;
};

// Takes arg if it is one of the shared flags (setting the thread count or the input);
// false for any other argument.
inline bool take_input_flag(const char* arg, InputFlags& in) {
  const auto value = [&](const char* flag) -> const char* {
    const std::size_t n = std::strlen(flag);
    return std::strncmp(arg, flag, n) == 0 ? arg + n : nullptr;
  };
  if (const char* v = value("--threads=")) {
    vidgrad::set_num_threads(std::atoi(v));
  } else if (const char* v = value("--batch=")) {
    in.batch = std::atoll(v);
  } else if (const char* v = value("--frames=")) {
    in.frames = std::atoll(v);
  } else if (const char* v = value("--size=")) {
    in.size = std::atoll(v);
  } else {
    return false;
  }
  return true;
}

}  // namespace vidgrad::bench
