// vidgrad's one exception type and the check macro every op uses to reject bad input.
// Messages name the op and the offending values, e.g.
//   "conv3d: input must have rank 5 (N,C,T,H,W), got rank 4 with shape [2, 3, 8, 8]".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace vidgrad {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace vidgrad

// VG_CHECK(cond, "op: message " << value << ...): throws vidgrad::Error when cond is false.
// The message is a stream expression so values of any printable type can be embedded.
#define VG_CHECK(cond, msg)                  \
  do {                                       \
    if (!(cond)) {                           \
      std::ostringstream vg_check_os_;       \
      vg_check_os_ << msg;                   \
      throw ::vidgrad::Error(vg_check_os_.str()); \
    }                                        \
  } while (0)

#define VG_THROW(msg)                        \
  do {                                       \
    std::ostringstream vg_check_os_;         \
    vg_check_os_ << msg;                     \
    throw ::vidgrad::Error(vg_check_os_.str()); \
  } while (0)
