// The vidgrad command-line tool: train, eval, predict, info, gen-synthetic, plot, bench.
// Run `vidgrad --help` or `vidgrad <command> --help`.
#include <CLI/CLI.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "plot.h"
#include "progress.h"
#include "train_config.h"
#include "trainer.h"
#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/bench/step_timer.h"
#include "vidgrad/core/cuda/context.h"
#include "vidgrad/core/file_io.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/data/synthetic.h"
#include "vidgrad/models/complexity.h"
#include "vidgrad/ops/loss.h"
#include "vidgrad/optim/sgd.h"

namespace {

using namespace vidgrad;
using namespace vidgrad::tools;
using nlohmann::json;
namespace fs = std::filesystem;

// ---- train ----

int run_train(const std::string& config_path, const std::vector<std::string>& overrides, bool resume,
              std::int64_t stop_after) {
  json j = json::object();
  if (!config_path.empty()) {
    try {
      j = json::parse(read_file(config_path));
    } catch (const json::exception& e) {
      throw Error("config '" + config_path + "' is not valid JSON: " + e.what());
    }
  }
  for (const auto& o : overrides) apply_override(j, o);
  const TrainConfig c = config_from_json(j);
  train(c, resume, stop_after);
  return 0;
}

// ---- eval ----

struct EvalArgs {
  std::string checkpoint, data, split, views = "1x1", twin_map, confusion, json_out;
  bool reverse = false;
  double require_top1 = -1;
  std::int64_t max_batches = 0;
  int workers = -1;
  std::string device = "cpu";
};

int run_eval(const EvalArgs& a) {
  LoadedModel m = load_trained(a.checkpoint);
  const Device device = parse_device(a.device);
  m.model->to(device);
  TrainConfig c = m.config;
  if (!a.data.empty()) c.data = a.data;
  if (!a.split.empty()) c.val_split = a.split;
  if (a.workers >= 0) c.workers = a.workers;
  data::Dataset ds = load_dataset(c, false);
  VG_CHECK(ds.class_names == m.classes, "eval: the dataset's classes differ from the checkpoint's ("
                                            << ds.class_names.size() << " vs " << m.classes.size() << ")");
  long temporal = 1, spatial = 1;
  VG_CHECK(std::sscanf(a.views.c_str(), "%ldx%ld", &temporal, &spatial) == 2 && temporal >= 1 &&
               (spatial == 1 || spatial == 3),
           "eval: --views must be TxS with T >= 1 and S 1 or 3 (e.g. 1x1, 10x3), got '" << a.views << "'");
  data::LoaderOptions lo;
  lo.batch_size = std::max<std::int64_t>(1, c.batch_size / (temporal * spatial));
  lo.workers = c.workers;
  lo.training = false;
  lo.shuffle = false;
  lo.drop_last = false;
  lo.temporal_views = temporal;
  lo.spatial_views = static_cast<int>(spatial);
  lo.clip = clip_options(c);
  lo.clip.reverse_time = a.reverse;
  if (spatial == 3) lo.clip.test_resize = lo.clip.crop;  // three crops span the resized frame
  data::Loader loader(ds, lo);
  EvalOptions eo;
  eo.device = device;
  eo.max_batches = a.max_batches;
  eo.progress_label = "eval";
  if (!a.twin_map.empty()) {
    const json twins = json::parse(read_file(a.twin_map));
    eo.label_map.resize(m.classes.size());
    for (std::size_t k = 0; k < m.classes.size(); ++k) {
      VG_CHECK(twins.contains(m.classes[k]), "eval: --twin-map has no entry for class '" << m.classes[k] << "'");
      const auto it = std::find(m.classes.begin(), m.classes.end(), twins.at(m.classes[k]).get<std::string>());
      VG_CHECK(it != m.classes.end(), "eval: --twin-map maps '" << m.classes[k] << "' to an unknown class");
      eo.label_map[k] = it - m.classes.begin();
    }
  }
  const EvalResult r = evaluate(*m.model, loader, static_cast<std::int64_t>(m.classes.size()), eo);
  std::printf("%s%s, %s views: top-1 %.2f%%  top-5 %.2f%%  mean class %.2f%%  (%lld videos, %lld failed)\n",
              a.reverse ? "time-reversed clips" : "clips", a.twin_map.empty() ? "" : " scored against twin labels",
              a.views.c_str(), 100 * r.top1, 100 * r.top5, 100 * r.mean_class, static_cast<long long>(r.videos),
              static_cast<long long>(r.failed));
  const std::string confusion =
      a.confusion.empty() ? (fs::path(a.checkpoint).parent_path() / "confusion.csv").string() : a.confusion;
  write_confusion_csv(confusion, r, m.classes);
  std::printf("confusion matrix: %s\n", confusion.c_str());
  if (!a.json_out.empty()) {
    write_file_atomic(a.json_out, json({{"top1", r.top1}, {"top5", r.top5}, {"mean_class", r.mean_class},
                                        {"videos", r.videos}, {"failed", r.failed}, {"views", a.views},
                                        {"reverse", a.reverse}, {"failures", r.failures}})
                                      .dump(2));
  }
  if (a.require_top1 >= 0 && r.top1 < a.require_top1) {
    std::fprintf(stderr, "vidgrad eval: top-1 %.2f%% is below the required %.2f%%\n", 100 * r.top1, 100 * a.require_top1);
    return 3;
  }
  return 0;
}

// ---- predict ----

int run_predict(const std::string& checkpoint, const std::vector<std::string>& videos, int top,
                const std::string& device_name) {
  LoadedModel m = load_trained(checkpoint);
  const Device device = parse_device(device_name);
  m.model->to(device);
  const data::ClipOptions co = clip_options(m.config);
  const auto classes = static_cast<std::int64_t>(m.classes.size());
  top = static_cast<int>(std::min<std::int64_t>(top, classes));
  autograd::NoGradGuard no_grad;
  int failures = 0;
  for (const std::string& path : videos) {
    try {
      Tensor clip = Tensor::empty({1, 3, co.frames, co.crop, co.crop});
      Generator gen(0);
      data::load_clip({path, 0}, co, false, gen, {}, clip.data<float>());
      const std::vector<float> lp = log_softmax(m.model->forward(clip.to(device)), 1).to_vector<float>();
      std::vector<std::int64_t> order(static_cast<std::size_t>(classes));
      for (std::int64_t k = 0; k < classes; ++k) order[k] = k;
      std::partial_sort(order.begin(), order.begin() + top, order.end(),
                        [&](std::int64_t a, std::int64_t b) { return lp[a] > lp[b]; });
      std::printf("%s\n", path.c_str());
      for (int k = 0; k < top; ++k)
        std::printf("  %6.2f%%  %s\n", 100.0 * std::exp(lp[order[k]]), m.classes[order[k]].c_str());
    } catch (const Error& e) {
      std::fprintf(stderr, "%s: %s\n", path.c_str(), e.what());
      ++failures;
    }
  }
  return failures ? 1 : 0;
}

// ---- info ----

int run_info(const std::string& model, std::int64_t classes, std::int64_t frames, std::int64_t size) {
  models::SevNetConfig base;
  base.num_classes = classes;
  auto net = models::make_model(model, base);
  const auto r = models::count_complexity(*net, {1, 3, frames, size, size});
  std::printf("%s, %lld classes, input 3x%lldx%lldx%lld\n%s", model.c_str(), static_cast<long long>(classes),
              static_cast<long long>(frames), static_cast<long long>(size), static_cast<long long>(size),
              r.table().c_str());
  if (cuda::is_available())
    std::printf("CUDA: %d device(s), cuda:0 is %s\n", cuda::device_count(), cuda::device_name(0).c_str());
  else
    std::printf("CUDA: not available (%s)\n", cuda::unavailable_reason().c_str());
  return 0;
}

// ---- gen-synthetic ----

int run_gen(const data::SyntheticOptions& o) {
  const auto t = std::chrono::steady_clock::now();
  const auto s = data::generate_synthetic(o);
  // Time-reversal twins by class name, for `vidgrad eval --reverse --twin-map`.
  json twins = json::object();
  const auto& templates = data::synthetic_templates();
  for (std::size_t k = 0; k < templates.size(); ++k)
    twins[data::strip_template(templates[k])] = data::strip_template(templates[data::synthetic_twin(k)]);
  write_file_atomic((fs::path(o.out_dir) / "reversal_twins.json").string(), twins.dump(1));
  std::printf("wrote %lld training and %lld validation videos of %lld classes (%dx%d, %d frames) to %s in %s\n",
              static_cast<long long>(s.train), static_cast<long long>(s.validation), static_cast<long long>(s.classes),
              o.width, o.height, o.frames, o.out_dir.c_str(),
              format_duration(std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count()).c_str());
  return 0;
}

// ---- bench: bench/step_timer.h ----

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vidgrad: train, evaluate and run SEVNet video networks on the CPU (and CUDA: bench --device)"};
  app.set_version_flag("--version", std::string("vidgrad ") + VIDGRAD_VERSION);
  app.require_subcommand(1);

  std::string config;
  std::vector<std::string> overrides;
  bool resume = false;
  auto* train_cmd = app.add_subcommand("train", "train a model (defaults: the paper's Something-Something recipe)");
  train_cmd->add_option("--config", config, "JSON config file")->check(CLI::ExistingFile);
  train_cmd->add_option("overrides", overrides, "key=value settings that override the config (e.g. epochs=10)");
  train_cmd->add_flag("--resume", resume, "continue from <output>/last.safetensors");
  std::int64_t stop_after = 0;
  train_cmd->add_option("--stop-after-steps", stop_after, "stop after this many steps in all (resume later)")
      ->check(CLI::NonNegativeNumber);

  EvalArgs ea;
  auto* eval_cmd = app.add_subcommand("eval", "evaluate a checkpoint: top-1, top-5, mean class accuracy, confusion matrix");
  eval_cmd->add_option("--checkpoint", ea.checkpoint, "checkpoint from vidgrad train")->required()->check(CLI::ExistingFile);
  eval_cmd->add_option("--data", ea.data, "dataset root (default: the one the model was trained on)");
  eval_cmd->add_option("--split", ea.split, "split to evaluate (default: the validation split)");
  eval_cmd->add_option("--views", ea.views, "TxS: T clips x S crops per video (1x1 single view, e.g. 10x3)");
  eval_cmd->add_flag("--reverse", ea.reverse, "play every clip backwards");
  eval_cmd->add_option("--twin-map", ea.twin_map, "JSON {class: twin class}; score predictions against the twins")
      ->check(CLI::ExistingFile);
  eval_cmd->add_option("--confusion", ea.confusion, "confusion matrix CSV (default: confusion.csv beside the checkpoint)");
  eval_cmd->add_option("--json", ea.json_out, "also write the results as JSON");
  eval_cmd->add_option("--max-batches", ea.max_batches, "evaluate at most this many batches");
  eval_cmd->add_option("--workers", ea.workers, "loader threads");
  eval_cmd->add_option("--device", ea.device, "cpu, cuda or cuda:N");
  eval_cmd->add_option("--require-top1", ea.require_top1, "exit with status 3 if top-1 (0..1) is below this")
      ->check(CLI::Range(0.0, 1.0));

  std::string pred_ckpt;
  std::vector<std::string> videos;
  int top = 5;
  auto* pred_cmd = app.add_subcommand("predict", "top classes with probabilities for each video");
  pred_cmd->add_option("--checkpoint", pred_ckpt, "checkpoint from vidgrad train")->required()->check(CLI::ExistingFile);
  pred_cmd->add_option("videos", videos, "video files or JPEG frame folders")->required();
  pred_cmd->add_option("--top", top, "how many classes to show")->check(CLI::PositiveNumber);
  std::string pred_device = "cpu";
  pred_cmd->add_option("--device", pred_device, "cpu, cuda or cuda:N");

  std::string info_model = "sevnet_g8";
  std::int64_t info_classes = 174, info_frames = 16, info_size = 224;
  auto* info_cmd = app.add_subcommand("info", "parameters and multiply-accumulates per layer");
  info_cmd->add_option("--model", info_model, "model name");
  info_cmd->add_option("--classes", info_classes, "number of classes")->check(CLI::PositiveNumber);
  info_cmd->add_option("--frames", info_frames, "frames per clip")->check(CLI::PositiveNumber);
  info_cmd->add_option("--size", info_size, "crop size")->check(CLI::Range(16, 4096));

  data::SyntheticOptions so;
  auto* gen_cmd = app.add_subcommand("gen-synthetic", "write a synthetic motion dataset (Something-Something V2 layout)");
  gen_cmd->add_option("--out", so.out_dir, "output folder")->required();
  gen_cmd->add_option("--train-per-class", so.train_per_class, "training videos per class")->check(CLI::PositiveNumber);
  gen_cmd->add_option("--val-per-class", so.validation_per_class, "validation videos per class")->check(CLI::NonNegativeNumber);
  gen_cmd->add_option("--width", so.width, "frame width (even)")->check(CLI::Range(8, 4096));
  gen_cmd->add_option("--height", so.height, "frame height (even)")->check(CLI::Range(8, 4096));
  gen_cmd->add_option("--frames", so.frames, "frames per video")->check(CLI::Range(2, 10000));
  gen_cmd->add_option("--seed", so.seed, "random seed");

  std::string plot_dir;
  auto* plot_cmd = app.add_subcommand("plot", "draw training curves (curves.png) from a run's metrics");
  plot_cmd->add_option("run", plot_dir, "run directory")->required()->check(CLI::ExistingDirectory);

  bench::StepBenchOptions ba;
  auto* bench_cmd = app.add_subcommand("bench", "time training or inference steps on synthetic input");
  bench_cmd->add_option("--model", ba.model, "model name");
  bench_cmd->add_option("--batch", ba.batch, "clips per step")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--frames", ba.frames, "frames per clip")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--size", ba.size, "crop size")->check(CLI::Range(32, 4096));
  bench_cmd->add_option("--classes", ba.classes, "number of classes")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--threads", ba.threads, "threads (default: all cores)");
  bench_cmd->add_option("--steps", ba.steps, "timed steps")->check(CLI::PositiveNumber);
  bench_cmd->add_option("--warmup", ba.warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  bench_cmd->add_flag("--inference", ba.inference, "time forward passes in eval mode");
  bench_cmd->add_option("--device", ba.device, "cpu, cuda or cuda:N");
  bench_cmd->add_flag("--tf32", ba.tf32, "let float32 convolutions and GEMMs use TF32 tensor cores (CUDA)");
  bench_cmd->add_flag("--profile", ba.profile, "print the time per op and conv shape (host wall time; CPU)");
  bench_cmd->add_flag("--winograd,!--no-winograd", ba.winograd,
                      "3x1x1 convs by Winograd F(4, 3) (CPU; default) or by the direct GEMM");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    if (*train_cmd) return run_train(config, overrides, resume, stop_after);
    if (*eval_cmd) return run_eval(ea);
    if (*pred_cmd) return run_predict(pred_ckpt, videos, top, pred_device);
    if (*info_cmd) return run_info(info_model, info_classes, info_frames, info_size);
    if (*gen_cmd) return run_gen(so);
    if (*plot_cmd) {
      std::printf("%s\n", plot_run(plot_dir).c_str());
      return 0;
    }
    if (*bench_cmd) {
      bench::run_step_benchmark(ba);
      return 0;
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "vidgrad: error: %s\n", e.what());
    return 1;
  } catch (const nlohmann::json::exception& e) {
    std::fprintf(stderr, "vidgrad: error: bad JSON: %s\n", e.what());
    return 1;
  }
  return 2;
}
