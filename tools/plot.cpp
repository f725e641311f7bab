// A gnuplot script written next to the metrics and run with `gnuplot script`.
#include "plot.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "vidgrad/core/error.h"

namespace vidgrad::tools {

namespace fs = std::filesystem;

std::string plot_run(const std::string& run_dir) {
  const fs::path dir(run_dir), steps = dir / "steps.csv", epochs = dir / "epochs.csv", png = dir / "curves.png";
  VG_CHECK(fs::is_regular_file(steps), "plot: no metrics file " << steps.string());
  VG_CHECK(std::system("command -v gnuplot > /dev/null 2>&1") == 0,
           "plot: gnuplot is not installed (apt-get install gnuplot-nox)");
  const fs::path script = dir / "curves.gp";
  {
    std::ofstream gp(script);
    gp << "set datafile separator ','\n"
       << "set terminal pngcairo size 1200,900 font ',10'\n"
       << "set output '" << png.string() << "'\n"
       << "set multiplot layout 3,1 title 'vidgrad training: " << dir.filename().string() << "'\n"
       << "set grid\nset key top right\n"
       << "set xlabel 'step'\nset ylabel 'loss'\n"
       << "plot '" << steps.string() << "' using 2:5 skip 1 with lines lc rgb '#7799cc' title 'train loss (batch)'\n"
       << "set xlabel 'epoch'\nset ylabel 'accuracy (%)'\nset yrange [0:100]\n";
    if (fs::is_regular_file(epochs))
      gp << "plot '" << epochs.string() << "' using 1:(100*$3) skip 1 with linespoints title 'train top-1', "
         << "'' using 1:(100*$4) skip 1 with linespoints title 'val top-1', "
         << "'' using 1:(100*$5) skip 1 with linespoints title 'val top-5'\n";
    else
      gp << "plot 0 notitle\n";
    gp << "set autoscale y\nset xlabel 'step'\nset ylabel 'learning rate'\n"
       << "plot '" << steps.string() << "' using 2:7 skip 1 with lines lc rgb '#cc7744' title 'lr'\n"
       << "unset multiplot\n";
  }
  const std::string cmd = "gnuplot '" + script.string() + "' 2> '" + (dir / "curves.log").string() + "'";
  VG_CHECK(std::system(cmd.c_str()) == 0, "plot: gnuplot failed; see " << (dir / "curves.log").string());
  return png.string();
}

}  // namespace vidgrad::tools
