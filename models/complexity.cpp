// count_complexity: one recorded forward pass, then a walk over the module tree.
#include "vidgrad/models/complexity.h"

#include <cstdio>
#include <sstream>

#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/nn/cost.h"

namespace vidgrad::models {

namespace {

std::string with_commas(std::int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<std::size_t>(i), ",");
  return s;
}

}  // namespace

ComplexityReport count_complexity(nn::Module& model, const Shape& input_shape) {
  const bool was_training = model.is_training();
  model.eval();
  nn::CostRecorder recorder;
  {
    autograd::NoGradGuard no_grad;
    model.forward(Tensor::zeros(input_shape));
  }
  model.train(was_training);

  ComplexityReport report;
  const auto params = model.named_parameters();
  for (const auto& [name, m] : model.named_modules()) {
    LayerComplexity row{name.empty() ? "(model)" : name, m->type_name(), {}, 0, 0};
    const std::string prefix = name.empty() ? "" : name + ".";
    for (const auto& [pname, t] : params) {
      if (pname.compare(0, prefix.size(), prefix) != 0) continue;
      if (pname.find('.', prefix.size()) != std::string::npos) continue;  // a descendant's
      row.params += t.numel();
    }
    auto it = recorder.costs().find(m);
    if (it != recorder.costs().end()) {
      row.macs = it->second.macs;
      row.output = it->second.output;
    }
    if (row.params == 0 && row.macs == 0) continue;
    report.total_params += row.params;
    report.total_macs += row.macs;
    report.layers.push_back(std::move(row));
  }
  return report;
}

std::string ComplexityReport::summary() const {
  char buf[160];
  std::snprintf(buf, sizeof buf, "params %s (%.2f M), MACs %s (%.2f G), FLOPs %.2f G", with_commas(total_params).c_str(),
                total_params / 1e6, with_commas(total_macs).c_str(), total_macs / 1e9, 2.0 * total_macs / 1e9);
  return buf;
}

std::string ComplexityReport::table() const {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-34s %-20s %-24s %12s %16s\n", "layer", "type", "output", "params", "MACs");
  os << buf;
  for (const LayerComplexity& l : layers) {
    std::snprintf(buf, sizeof buf, "%-34s %-20s %-24s %12s %16s\n", l.name.c_str(), l.type.c_str(),
                  l.output.empty() ? "" : shape_str(l.output).c_str(), with_commas(l.params).c_str(),
                  with_commas(l.macs).c_str());
    os << buf;
  }
  os << "total: " << summary() << "\n";
  return os.str();
}

}  // namespace vidgrad::models
