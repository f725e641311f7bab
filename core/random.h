// Seeded random numbers. Every random op takes a Generator so runs are reproducible;
// the state serialises to a string for training checkpoints.
#pragma once

#include <cstdint>
#include <random>
#include <string>

namespace vidgrad {

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0x5eed) : engine_(seed) {}

  void seed(std::uint64_t s) { engine_.seed(s); }
  std::uint64_t next_u64() { return engine_(); }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(engine_() >> 11) * 0x1.0p-53; }
  double normal();

  std::string state() const;
  void set_state(const std::string& state);

 private:
  std::mt19937_64 engine_;
  // Box-Muller produces pairs; the spare is kept so normal() costs one log and one sqrt.
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// The process-wide generator used when a caller passes none. Not thread-safe: data
// loaders and workers own their own Generators.
Generator& default_generator();

}  // namespace vidgrad
