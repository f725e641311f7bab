// Training loop, evaluation and checkpoint plumbing for the CLI.
#include "trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "plot.h"
#include "progress.h"
#include "vidgrad/autograd/grad_mode.h"
#include "vidgrad/core/file_io.h"
#include "vidgrad/core/parallel.h"
#include "vidgrad/core/safetensors.h"
#include "vidgrad/ops/loss.h"
#include "vidgrad/optim/checkpoint.h"
#include "vidgrad/optim/schedule.h"
#include "vidgrad/optim/sgd.h"

namespace vidgrad::tools {

namespace fs = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

data::Dataset load_dataset(const TrainConfig& c, bool train_split) {
  const std::string split = train_split ? c.train_split : c.val_split;
  if (c.dataset == "ssv2") return data::load_ssv2(c.data, split);
  if (c.dataset == "ssv1") return data::load_ssv1(c.data, split);
  const std::string list = (fs::path(c.data) / (train_split ? c.train_list : c.val_list)).string();
  return data::load_list(list, c.data);
}

std::shared_ptr<models::SevNet> build_model(const TrainConfig& c, std::int64_t classes) {
  models::SevNetConfig base;
  base.num_classes = classes;
  base.dropout = c.dropout;
  base.zero_init_last_bn = c.zero_init_last_bn;
  std::copy(c.depths.begin(), c.depths.end(), base.depths.begin());
  base.seed = c.seed;
  return models::make_model(c.model, base);
}

data::ClipOptions clip_options(const TrainConfig& c) {
  data::ClipOptions o;
  o.frames = c.frames;
  o.crop = c.crop;
  o.train_resize_min = c.resize_min;
  o.train_resize_max = c.resize_max;
  o.test_resize = c.test_resize;
  o.flip = c.flip;
  return o;
}

namespace {

data::LoaderOptions loader_options(const TrainConfig& c, bool training) {
  data::LoaderOptions o;
  o.batch_size = c.batch_size;
  o.workers = c.workers;
  o.prefetch = std::max(2, 2 * c.workers);
  o.training = training;
  o.shuffle = training;
  o.drop_last = training;
  o.seed = c.seed;
  o.max_failure_fraction = c.max_failure_fraction;
  o.clip = clip_options(c);
  return o;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Keeps the header and the rows whose first column `key_col` is <= limit: metrics
// written after the checkpoint a resumed run starts from are dropped.
void truncate_csv(const fs::path& path, int key_col, std::int64_t limit) {
  if (!fs::exists(path)) return;
  std::ifstream in(path);
  std::string line, out;
  bool header = true;
  while (std::getline(in, line)) {
    if (header) {
      out += line + "\n";
      header = false;
      continue;
    }
    std::istringstream row(line);
    std::string cell;
    for (int i = 0; i <= key_col; ++i) std::getline(row, cell, ',');
    if (!cell.empty() && std::stoll(cell) <= limit) out += line + "\n";
  }
  write_file_atomic(path.string(), out);
}

struct RunState {
  std::int64_t epoch = 0;  // epochs completed
  std::int64_t batch = 0;  // batches done in the current epoch
  std::int64_t step = 0;
  double best_top1 = -1;
  double epoch_loss = 0, epoch_correct = 0, epoch_clips = 0;  // running sums of the current epoch
};

optim::TrainingCheckpoint make_checkpoint(const models::SevNet& model, const optim::Sgd& sgd, const RunState& s,
                                          const TrainConfig& c, const std::vector<std::string>& classes) {
  optim::TrainingCheckpoint ck;
  ck.model = model.state_dict();
  ck.optimizer = sgd.state();
  ck.step = s.step;
  ck.epoch = s.epoch;
  for (const auto& [name, g] : model.named_generators()) ck.rng["model/" + name] = g->state();
  ck.extra["config"] = to_json(c).dump();
  ck.extra["classes"] = json(classes).dump();
  ck.extra["batch"] = std::to_string(s.batch);
  ck.extra["best_top1"] = json(s.best_top1).dump();
  ck.extra["epoch_sums"] = json({s.epoch_loss, s.epoch_correct, s.epoch_clips}).dump();
  return ck;
}

}  // namespace

EvalResult evaluate(models::SevNet& model, data::Loader& loader, std::int64_t classes, const EvalOptions& opts) {
  const bool was_training = model.is_training();
  model.eval();
  autograd::NoGradGuard no_grad;
  EvalResult r;
  r.confusion.assign(static_cast<std::size_t>(classes), std::vector<std::int64_t>(static_cast<std::size_t>(classes), 0));
  const std::int64_t views = loader.options().temporal_views * loader.options().spatial_views;
  std::int64_t batches = loader.batches_per_epoch();
  if (opts.max_batches > 0) batches = std::min(batches, opts.max_batches);
  Progress progress(opts.progress_label, batches, opts.log_every);
  loader.start_epoch(0);
  double correct1 = 0, correct5 = 0, loss_sum = 0;
  for (std::int64_t b = 0; b < batches; ++b) {
    auto batch = loader.next();
    if (!batch) break;
    r.failed += static_cast<std::int64_t>(batch->failures.size());
    for (auto& f : batch->failures) r.failures.push_back(f);
    const std::int64_t n = batch->labels.numel();
    if (n == 0) continue;
    const Tensor logits = model.forward(batch->clips.to(opts.device, /*non_blocking=*/true));
    const std::vector<float> lp = log_softmax(logits, 1).to_vector<float>();
    const std::vector<std::int64_t> labels = batch->labels.to_vector<std::int64_t>();
    for (std::int64_t i = 0; i < n; ++i) {
      std::vector<double> prob(static_cast<std::size_t>(classes), 0.0);
      for (std::int64_t v = 0; v < views; ++v)
        for (std::int64_t k = 0; k < classes; ++k) prob[k] += std::exp(lp[(i * views + v) * classes + k]) / views;
      std::int64_t target = labels[i];
      if (!opts.label_map.empty()) target = opts.label_map.at(static_cast<std::size_t>(target));
      std::vector<std::int64_t> order(static_cast<std::size_t>(classes));
      for (std::int64_t k = 0; k < classes; ++k) order[k] = k;
      std::partial_sort(order.begin(), order.begin() + std::min<std::int64_t>(5, classes), order.end(),
                        [&](std::int64_t a, std::int64_t c) { return prob[a] > prob[c]; });
      correct1 += order[0] == target;
      for (std::int64_t k = 0; k < std::min<std::int64_t>(5, classes); ++k) correct5 += order[k] == target;
      loss_sum -= std::log(std::max(prob[target], 1e-12));
      r.confusion[target][order[0]] += 1;
      ++r.videos;
    }
    progress.update(b + 1, "top-1 " + fmt("%.1f%%", 100.0 * correct1 / std::max<std::int64_t>(r.videos, 1)));
  }
  r.top1 = r.videos ? correct1 / r.videos : 0.0;
  r.top5 = r.videos ? correct5 / r.videos : 0.0;
  r.loss = r.videos ? loss_sum / r.videos : 0.0;
  double class_sum = 0;
  std::int64_t seen_classes = 0;
  for (std::int64_t k = 0; k < classes; ++k) {
    std::int64_t total = 0;
    for (auto v : r.confusion[k]) total += v;
    if (total == 0) continue;
    class_sum += static_cast<double>(r.confusion[k][k]) / total;
    ++seen_classes;
  }
  r.mean_class = seen_classes ? class_sum / seen_classes : 0.0;
  progress.finish("top-1 " + fmt("%.2f%%", 100 * r.top1) + "  top-5 " + fmt("%.2f%%", 100 * r.top5) +
                  "  mean class " + fmt("%.2f%%", 100 * r.mean_class) + "  videos " + std::to_string(r.videos) +
                  (r.failed ? "  failed " + std::to_string(r.failed) : ""));
  model.train(was_training);
  return r;
}

void write_confusion_csv(const std::string& path, const EvalResult& r, const std::vector<std::string>& classes) {
  std::ostringstream os;
  os << "true\\predicted";
  for (std::size_t k = 0; k < r.confusion.size(); ++k) os << ",\"" << (k < classes.size() ? classes[k] : "") << "\"";
  os << "\n";
  for (std::size_t t = 0; t < r.confusion.size(); ++t) {
    os << "\"" << (t < classes.size() ? classes[t] : "") << "\"";
    for (auto v : r.confusion[t]) os << "," << v;
    os << "\n";
  }
  write_file_atomic(path, os.str());
}

double train(const TrainConfig& c, bool resume, std::int64_t stop_after_steps) {
  validate(c);
  if (c.threads > 0) set_num_threads(c.threads);
  const fs::path out(c.output);
  fs::create_directories(out);
  const fs::path last = out / "last.safetensors", best = out / "best.safetensors";
  const fs::path steps_csv = out / "steps.csv", epochs_csv = out / "epochs.csv";

  data::Dataset train_ds = load_dataset(c, true), val_ds = load_dataset(c, false);
  const auto classes = static_cast<std::int64_t>(train_ds.class_names.size());
  VG_CHECK(classes >= 2, "train: the dataset has " << classes << " classes; at least 2 are needed");
  auto model = build_model(c, classes);
  const Device device = parse_device(c.device);
  model->to(device);  // before the optimizer, whose momentum buffers follow the parameters
  data::Loader train_loader(train_ds, loader_options(c, true)), val_loader(val_ds, loader_options(c, false));
  const std::int64_t per_epoch = c.max_train_batches > 0 ? std::min(c.max_train_batches, train_loader.batches_per_epoch())
                                                         : train_loader.batches_per_epoch();
  VG_CHECK(per_epoch >= 1, "train: " << train_ds.samples.size() << " training videos do not fill one batch of "
                                     << c.batch_size);
  optim::Sgd sgd(model->named_parameters(), {.lr = 0.0,
                                             .momentum = c.momentum,
                                             .weight_decay = c.weight_decay,
                                             .nesterov = c.nesterov,
                                             .decay_bn_and_bias = c.decay_bn_and_bias});
  optim::WarmupCosine schedule({.base_lr = optim::linear_scaled_lr(c.lr_per_8, c.batch_size),
                                .warmup_steps = c.warmup_epochs * per_epoch,
                                .total_steps = c.epochs * per_epoch});
  RunState s;
  if (resume) {
    VG_CHECK(fs::exists(last), "train --resume: no checkpoint " << last.string());
    const optim::TrainingCheckpoint ck = optim::load_checkpoint(last.string());
    const TrainConfig saved = config_from_json(json::parse(ck.extra.at("config")));
    VG_CHECK(to_json(saved).dump() == to_json(c).dump(),
             "train --resume: the configuration differs from the one in " << last.string()
                                                                         << "; resume with the run's config.json");
    model->load_state_dict(ck.model);
    sgd.load_state(ck.optimizer);
    for (const auto& [name, g] : model->named_generators()) g->set_state(ck.rng.at("model/" + name));
    s.step = ck.step;
    s.epoch = ck.epoch;
    s.batch = std::stoll(ck.extra.at("batch"));
    s.best_top1 = json::parse(ck.extra.at("best_top1")).get<double>();
    const auto sums = json::parse(ck.extra.at("epoch_sums"));
    s.epoch_loss = sums[0];
    s.epoch_correct = sums[1];
    s.epoch_clips = sums[2];
    truncate_csv(steps_csv, 1, s.step);
    truncate_csv(epochs_csv, 0, s.epoch);
    std::printf("resuming %s at epoch %lld, batch %lld (step %lld)\n", out.c_str(), static_cast<long long>(s.epoch + 1),
                static_cast<long long>(s.batch), static_cast<long long>(s.step));
  } else {
    write_file_atomic(steps_csv.string(), "epoch,step,batch,clips,loss,acc,lr,clips_per_s\n");
    write_file_atomic(epochs_csv.string(), "epoch,train_loss,train_acc,val_top1,val_top5,val_mean_class,lr,seconds\n");
  }
  write_file_atomic((out / "config.json").string(), to_json(c).dump(2) + "\n");
  std::printf("%s: %lld classes, %zu training / %zu validation videos, %lld batches of %lld per epoch, %d threads\n",
              c.model.c_str(), static_cast<long long>(classes), train_ds.samples.size(), val_ds.samples.size(),
              static_cast<long long>(per_epoch), static_cast<long long>(c.batch_size), get_num_threads());

  std::ofstream steps_out(steps_csv, std::ios::app);
  std::ofstream epochs_out(epochs_csv, std::ios::app);
  const bool on_terminal = Progress::is_terminal(stdout);
  for (; s.epoch < c.epochs; ++s.epoch, s.batch = 0) {
    model->train();
    train_loader.start_epoch(s.epoch, s.batch);
    Progress progress("epoch " + std::to_string(s.epoch + 1) + "/" + std::to_string(c.epochs), per_epoch, c.log_every);
    const auto epoch_start = Clock::now();
    double recent_loss = 0;
    for (; s.batch < per_epoch; ++s.batch) {
      const auto t0 = Clock::now();
      auto batch = train_loader.next();
      VG_CHECK(batch.has_value(), "train: the loader ended the epoch early");
      const double lr = schedule.lr_at(s.step);
      sgd.set_lr(lr);
      // On CUDA the upload is staged in pinned memory and queued behind the step's
      // kernels; the host goes on to the loader's next batch meanwhile.
      const Tensor logits = model->forward(batch->clips.to(device, /*non_blocking=*/true));
      // Labels stay on the host: cross_entropy checks them there and uploads them itself.
      Tensor loss = cross_entropy(logits, batch->labels, c.label_smoothing);
      model->zero_grad();
      loss.backward();
      sgd.step();
      ++s.step;
      const double l = loss.item();
      VG_CHECK(std::isfinite(l), "train: the loss became " << l << " at step " << s.step << "; lower lr_per_8");
      const std::vector<float> lv = logits.to_vector<float>();
      const std::vector<std::int64_t> yv = batch->labels.to_vector<std::int64_t>();
      std::int64_t correct = 0;
      for (std::size_t i = 0; i < yv.size(); ++i) {
        const float* row = lv.data() + i * classes;
        correct += std::max_element(row, row + classes) - row == yv[i];
      }
      const auto n = static_cast<double>(yv.size());
      s.epoch_loss += l * n;
      s.epoch_correct += static_cast<double>(correct);
      s.epoch_clips += n;
      recent_loss = recent_loss == 0 ? l : 0.9 * recent_loss + 0.1 * l;
      const double rate = n / std::chrono::duration<double>(Clock::now() - t0).count();
      steps_out << s.epoch + 1 << ',' << s.step << ',' << s.batch + 1 << ',' << yv.size() << ',' << l << ','
                << correct / n << ',' << lr << ',' << rate << '\n';
      steps_out.flush();
      progress.update(s.batch + 1, "loss " + fmt("%.4f", on_terminal ? recent_loss : l) + "  lr " + fmt("%.5f", lr) +
                                       "  " + fmt("%.1f", rate) + " clips/s");
      const bool stop = stop_after_steps > 0 && s.step >= stop_after_steps;
      if (s.batch + 1 < per_epoch && (stop || (c.checkpoint_every > 0 && s.step % c.checkpoint_every == 0))) {
        RunState mid = s;
        mid.batch = s.batch + 1;
        optim::save_checkpoint(last.string(), make_checkpoint(*model, sgd, mid, c, train_ds.class_names));
      }
      if (stop && s.batch + 1 < per_epoch) {
        progress.finish("stopped after step " + std::to_string(s.step) + "; continue with --resume");
        return s.best_top1;
      }
    }
    const double train_loss = s.epoch_loss / std::max(s.epoch_clips, 1.0);
    const double train_acc = s.epoch_correct / std::max(s.epoch_clips, 1.0);
    progress.finish("train loss " + fmt("%.4f", train_loss) + "  train top-1 " + fmt("%.2f%%", 100 * train_acc));
    EvalOptions eval_opts;
    eval_opts.max_batches = c.max_val_batches;
    eval_opts.log_every = c.log_every;
    eval_opts.progress_label = "  validate";
    eval_opts.device = device;
    EvalResult v = evaluate(*model, val_loader, classes, eval_opts);
    const double seconds = std::chrono::duration<double>(Clock::now() - epoch_start).count();
    epochs_out << s.epoch + 1 << ',' << train_loss << ',' << train_acc << ',' << v.top1 << ',' << v.top5 << ','
               << v.mean_class << ',' << sgd.lr() << ',' << seconds << '\n';
    epochs_out.flush();
    const bool improved = v.top1 > s.best_top1;
    if (improved) s.best_top1 = v.top1;
    RunState done = s;
    done.epoch = s.epoch + 1;
    done.batch = 0;
    done.epoch_loss = done.epoch_correct = done.epoch_clips = 0;
    const optim::TrainingCheckpoint ck = make_checkpoint(*model, sgd, done, c, train_ds.class_names);
    optim::save_checkpoint(last.string(), ck);
    if (improved) optim::save_checkpoint(best.string(), ck);
    s.epoch_loss = s.epoch_correct = s.epoch_clips = 0;
    if (stop_after_steps > 0 && s.step >= stop_after_steps && s.epoch + 1 < c.epochs) {
      std::printf("stopped after step %lld; continue with --resume\n", static_cast<long long>(s.step));
      return s.best_top1;
    }
  }
  try {
    std::printf("training curves: %s\n", plot_run(out.string()).c_str());
  } catch (const Error& e) {
    std::printf("no plot: %s\n", e.what());
  }
  std::printf("best validation top-1 %.2f%%; checkpoints in %s\n", 100 * std::max(s.best_top1, 0.0), out.c_str());
  return s.best_top1;
}

LoadedModel load_trained(const std::string& checkpoint) {
  const optim::TrainingCheckpoint ck = optim::load_checkpoint(checkpoint);
  VG_CHECK(ck.extra.count("config") && ck.extra.count("classes"),
           "checkpoint '" << checkpoint << "' has no model configuration (it was not written by vidgrad train)");
  LoadedModel m;
  m.config = config_from_json(json::parse(ck.extra.at("config")));
  m.classes = json::parse(ck.extra.at("classes")).get<std::vector<std::string>>();
  m.model = build_model(m.config, static_cast<std::int64_t>(m.classes.size()));
  m.model->load_state_dict(ck.model);
  m.model->eval();
  return m;
}

}  // namespace vidgrad::tools
