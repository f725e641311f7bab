// Box-Muller normals and textual state round-trips for Generator.
#include "vidgrad/core/random.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <sstream>

#include "vidgrad/core/error.h"

namespace vidgrad {

double Generator::normal() {
  if (has_spare_) {
    has_spare_ = false;
    return spare_;
  }
  double u1 = uniform();
  while (u1 <= 0.0) u1 = uniform();
  const double u2 = uniform();
  const double r = std::sqrt(-2.0 * std::log(u1));
  const double theta = 2.0 * std::numbers::pi * u2;
  spare_ = r * std::sin(theta);
  has_spare_ = true;
  return r * std::cos(theta);
}

std::string Generator::state() const {
  // The spare normal is stored by its bit pattern so the round trip is exact.
  std::uint64_t bits = 0;
  std::memcpy(&bits, &spare_, sizeof bits);
  std::ostringstream os;
  os << engine_ << ' ' << has_spare_ << ' ' << bits;
  return os.str();
}

void Generator::set_state(const std::string& state) {
  std::istringstream is(state);
  std::mt19937_64 engine;
  bool has_spare = false;
  std::uint64_t bits = 0;
  is >> engine >> has_spare >> bits;
  VG_CHECK(!is.fail(), "Generator::set_state: malformed state string of " << state.size() << " bytes");
  engine_ = engine;
  has_spare_ = has_spare;
  std::memcpy(&spare_, &bits, sizeof bits);
}

Generator& default_generator() {
  static Generator gen;
  return gen;
}

}  // namespace vidgrad
