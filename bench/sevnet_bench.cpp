// sevnet_bench: `vidgrad bench` without the CLI and the video pipeline, for machines that
// build vidgrad with -DVIDGRAD_VIDEO=OFF (the GPU check). Same flags:
//   sevnet_bench --device cuda --batch 8 --frames 16 --size 224 [--inference] [--tf32] [--profile]
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "step_timer.h"

int main(int argc, char** argv) {
  vidgrad::bench::StepBenchOptions o;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string flag = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw std::runtime_error(flag + " needs a value");
        return argv[++i];
      };
      if (flag == "--model") o.model = value();
      else if (flag == "--device") o.device = value();
      else if (flag == "--batch") o.batch = std::stoll(value());
      else if (flag == "--frames") o.frames = std::stoll(value());
      else if (flag == "--size") o.size = std::stoll(value());
      else if (flag == "--classes") o.classes = std::stoll(value());
      else if (flag == "--threads") o.threads = std::stoi(value());
      else if (flag == "--steps") o.steps = std::stoi(value());
      else if (flag == "--warmup") o.warmup = std::stoi(value());
      else if (flag == "--inference") o.inference = true;
      else if (flag == "--tf32") o.tf32 = true;
      else if (flag == "--profile") o.profile = true;
      else throw std::runtime_error("unknown flag " + flag);
    }
    vidgrad::bench::run_step_benchmark(o);
  } catch (const std::exception& e) {
    std::cerr << "sevnet_bench: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
