// Training curves drawn by gnuplot (Debian's gnuplot-nox) from a run's metrics files.
#pragma once

#include <string>

namespace vidgrad::tools {

// Reads <run_dir>/steps.csv and epochs.csv and writes <run_dir>/curves.png (loss,
// accuracy, learning rate). Returns the PNG path; throws when gnuplot is missing or fails.
std::string plot_run(const std::string& run_dir);

}  // namespace vidgrad::tools
