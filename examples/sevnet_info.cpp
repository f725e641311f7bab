// Prints parameters and multiply-accumulates per layer for a SEVNet variant.
//
//   build/examples/sevnet_info [model=sevnet_g8] [classes=174] [frames=16] [size=224]
#include <cstdio>
#include <cstdlib>
#include <string>

#include "vidgrad/models/complexity.h"
#include "vidgrad/models/sevnet.h"

int main(int argc, char** argv) {
  using namespace vidgrad;
  const std::string name = argc > 1 ? argv[1] : "sevnet_g8";
  const long classes = argc > 2 ? std::atol(argv[2]) : 174;
  const long frames = argc > 3 ? std::atol(argv[3]) : 16;
  const long size = argc > 4 ? std::atol(argv[4]) : 224;
  try {
    models::SevNetConfig base;
    base.num_classes = classes;
    auto model = models::make_model(name, base);
    const models::ComplexityReport r = models::count_complexity(*model, {1, 3, frames, size, size});
    std::printf("%s, %ld classes, input 3x%ldx%ldx%ld\n%s", name.c_str(), classes, frames, size, size,
                r.table().c_str());
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
