// Rendering and writing the synthetic motion dataset.
#include "vidgrad/data/synthetic.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numbers>

#include "vidgrad/core/error.h"
#include "vidgrad/core/file_io.h"
#include "vidgrad/core/random.h"
#include "vidgrad/data/video_writer.h"

namespace vidgrad::data {

namespace fs = std::filesystem;

namespace {

enum class Shape { kSquare, kDisc, kTriangle, kBar };
constexpr const char* kShapeNames[] = {"square", "disc", "triangle", "bar"};

struct Rgb {
  float r, g, b;
};

Rgb random_colour(Generator& g) {
  return {static_cast<float>(g.uniform()), static_cast<float>(g.uniform()), static_cast<float>(g.uniform())};
}

float distance(const Rgb& a, const Rgb& b) {
  return std::abs(a.r - b.r) + std::abs(a.g - b.g) + std::abs(a.b - b.b);
}

// Whether local coordinates (u, v) in [-1, 1]^2 lie inside the shape; `tip` marks the bar's end.
bool inside(Shape s, double u, double v, bool& tip) {
  tip = false;
  switch (s) {
    case Shape::kSquare: return std::abs(u) <= 1 && std::abs(v) <= 1;
    case Shape::kDisc: return u * u + v * v <= 1;
    case Shape::kTriangle: return v <= 1 && v >= -1 && std::abs(u) <= (v + 1) / 2;
    case Shape::kBar:
      if (std::abs(v) > 0.35 || std::abs(u) > 1) return false;
      tip = u > 0.55;
      return true;
  }
  return false;
}

// One video's appearance and its motion as a function of time t in [0, 1].
struct Scene {
  Shape shape;
  Rgb bg, bg2, fg, fg2, tip;
  double tex_fx, tex_fy, tex_phase, stripes, noise;
  double x0, y0, x1, y1;          // centre path in pixels
  double s0, s1;                  // half-size path in pixels
  double a0, a1;                  // angle path in radians
  double alpha0, alpha1;          // opacity path
};

Scene make_scene(std::int64_t base_class, Generator& g, int W, int H) {
  Scene s{};
  s.shape = static_cast<Shape>(g.next_u64() % 4);
  if (base_class == 6) s.shape = Shape::kBar;  // rotation needs a shape without rotational symmetry
  s.bg = random_colour(g);
  s.bg2 = random_colour(g);
  for (Rgb* c : {&s.bg, &s.bg2}) *c = {c->r * 0.55f, c->g * 0.55f, c->b * 0.55f};  // darker than objects
  // The object is brighter than its background: random colours of either polarity make
  // motion direction much slower to learn without adding anything the demo needs.
  auto luma = [](const Rgb& c) { return 0.299f * c.r + 0.587f * c.g + 0.114f * c.b; };
  do s.fg = random_colour(g);
  while (distance(s.fg, s.bg) < 0.6 || luma(s.fg) < luma(s.bg) + 0.25f);
  s.fg2 = random_colour(g);
  s.tip = {1.0f - s.fg.r, 1.0f - s.fg.g, 1.0f - s.fg.b};
  s.tex_fx = 0.05 + 0.25 * g.uniform();
  s.tex_fy = 0.05 + 0.25 * g.uniform();
  s.tex_phase = 6.28 * g.uniform();
  s.stripes = g.uniform() < 0.5 ? 0.0 : 2.0 + 4.0 * g.uniform();
  s.noise = 0.01 + 0.04 * g.uniform();
  const double m = std::min(W, H);
  const double size = m * (0.12 + 0.08 * g.uniform());
  s.s0 = s.s1 = size;
  s.a0 = s.a1 = 6.28 * g.uniform();
  s.alpha0 = s.alpha1 = 1.0;
  // Paths stay inside the central part of the frame, so random crops keep the object.
  const double travel = 0.35 + 0.25 * g.uniform();  // fraction of the frame crossed
  const double cx = W / 2.0 + (g.uniform() - 0.5) * W * 0.1, cy = H / 2.0 + (g.uniform() - 0.5) * H * 0.1;
  s.x0 = s.x1 = cx;
  s.y0 = s.y1 = cy;
  switch (base_class) {
    case 0:  // left to right
      s.x0 = cx - travel * W / 2;
      s.x1 = cx + travel * W / 2;
      break;
    case 2:  // up: y decreases
      s.y0 = cy + travel * H / 2;
      s.y1 = cy - travel * H / 2;
      break;
    case 4:  // closer: grows
      s.s0 = size * 0.6;
      s.s1 = size * (1.6 + 0.6 * g.uniform());
      break;
    case 6:  // clockwise (image y points down, so the angle increases)
      s.s0 = s.s1 = size * 1.5;
      s.a1 = s.a0 + (1.0 + g.uniform()) * std::numbers::pi;
      break;
    case 8:  // appearing
      s.alpha0 = 0.0;
      s.alpha1 = 1.0;
      break;
    case 10:  // diagonally down: top-left to bottom-right
      s.x0 = cx - travel * W / 3;
      s.y0 = cy - travel * H / 3;
      s.x1 = cx + travel * W / 3;
      s.y1 = cy + travel * H / 3;
      break;
  }
  return s;
}

Image render(const Scene& s, double t, int W, int H, Generator& noise) {
  Image img{H, W, std::vector<std::uint8_t>(static_cast<std::size_t>(W) * H * 3)};
  const double e = t * t * (3 - 2 * t) * 0.5 + t * 0.5;  // mild easing, varies speed along the path
  const double cx = s.x0 + (s.x1 - s.x0) * e, cy = s.y0 + (s.y1 - s.y0) * e;
  const double size = s.s0 + (s.s1 - s.s0) * e, ang = s.a0 + (s.a1 - s.a0) * e;
  const double alpha = s.alpha0 + (s.alpha1 - s.alpha0) * e;
  const double ca = std::cos(ang), sa = std::sin(ang);
  for (int y = 0; y < H; ++y) {
    for (int x = 0; x < W; ++x) {
      const double tex = 0.5 + 0.5 * std::sin(x * s.tex_fx + s.tex_phase) * std::cos(y * s.tex_fy);
      float c[3] = {static_cast<float>(s.bg.r + (s.bg2.r - s.bg.r) * tex * 0.3),
                    static_cast<float>(s.bg.g + (s.bg2.g - s.bg.g) * tex * 0.3),
                    static_cast<float>(s.bg.b + (s.bg2.b - s.bg.b) * tex * 0.3)};
      const double dx = (x + 0.5 - cx) / size, dy = (y + 0.5 - cy) / size;
      const double u = ca * dx + sa * dy, v = -sa * dx + ca * dy;  // rotate into the object's frame
      bool tip = false;
      if (inside(s.shape, u, v, tip)) {
        const bool stripe = s.stripes > 0 && std::fmod(std::abs(u + 1) * s.stripes, 2.0) < 1.0;
        const Rgb& f = tip ? s.tip : (stripe ? s.fg2 : s.fg);
        c[0] += static_cast<float>(alpha) * (f.r - c[0]);
        c[1] += static_cast<float>(alpha) * (f.g - c[1]);
        c[2] += static_cast<float>(alpha) * (f.b - c[2]);
      }
      for (int k = 0; k < 3; ++k) {
        const double v8 = (c[k] + s.noise * (2 * noise.uniform() - 1)) * 255.0;
        img.rgb[(static_cast<std::size_t>(y) * W + x) * 3 + k] = static_cast<std::uint8_t>(std::clamp(v8, 0.0, 255.0));
      }
    }
  }
  return img;
}

std::uint64_t video_seed(std::uint64_t seed, std::int64_t id) {
  std::uint64_t x = seed * 0x9e3779b97f4a7c15ULL + static_cast<std::uint64_t>(id) + 1;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

const std::vector<std::string>& synthetic_templates() {
  static const std::vector<std::string> t = {
      "Moving [something] from left to right", "Moving [something] from right to left",
      "Moving [something] up",                 "Moving [something] down",
      "Moving [something] closer",             "Moving [something] away",
      "Rotating [something] clockwise",        "Rotating [something] anticlockwise",
      "Making [something] appear",             "Making [something] disappear",
      "Moving [something] diagonally down",    "Moving [something] diagonally up",
  };
  return t;
}

std::int64_t synthetic_twin(std::int64_t label) { return label ^ 1; }

std::vector<Image> render_synthetic_video(std::int64_t label, std::uint64_t seed, int W, int H, int frames) {
  VG_CHECK(label >= 0 && label < static_cast<std::int64_t>(synthetic_templates().size()),
           "synthetic: label " << label << " is outside [0, " << synthetic_templates().size() << ")");
  VG_CHECK(W >= 8 && H >= 8 && frames >= 2, "synthetic: need at least 8x8 pixels and 2 frames, got " << W << "x" << H
                                                                                                     << ", " << frames);
  Generator g(seed);
  const Scene scene = make_scene(label & ~std::int64_t{1}, g, W, H);
  std::vector<Image> out;
  for (int i = 0; i < frames; ++i) out.push_back(render(scene, static_cast<double>(i) / (frames - 1), W, H, g));
  if (label & 1) std::reverse(out.begin(), out.end());  // the twin: the same frames backwards
  return out;
}

SyntheticSummary generate_synthetic(const SyntheticOptions& o) {
  VG_CHECK(!o.out_dir.empty(), "generate_synthetic: out_dir is empty");
  VG_CHECK(o.train_per_class >= 1 && o.validation_per_class >= 0,
           "generate_synthetic: need train_per_class >= 1 and validation_per_class >= 0");
  VG_CHECK(o.width % 2 == 0 && o.height % 2 == 0, "generate_synthetic: width and height must be even, got "
                                                      << o.width << "x" << o.height);
  const fs::path root(o.out_dir);
  fs::create_directories(root / "videos");
  const auto& templates = synthetic_templates();
  nlohmann::json labels = nlohmann::json::object();
  for (std::size_t i = 0; i < templates.size(); ++i) {
    std::string name;
    for (char c : templates[i])
      if (c != '[' && c != ']') name += c;
    labels[name] = std::to_string(i);
  }
  nlohmann::json train = nlohmann::json::array(), validation = nlohmann::json::array();
  SyntheticSummary summary;
  summary.classes = static_cast<std::int64_t>(templates.size());
  std::int64_t id = 0;
  VideoWriterOptions wo;
  wo.codec = o.codec;
  wo.fps = o.fps;
  for (int split = 0; split < 2; ++split) {
    const std::int64_t per_class = split == 0 ? o.train_per_class : o.validation_per_class;
    for (std::int64_t k = 0; k < per_class; ++k) {
      for (std::int64_t label = 0; label < summary.classes; ++label) {
        ++id;
        const std::uint64_t seed = video_seed(o.seed, id);
        Generator naming(seed ^ 0xabcdefULL);
        const std::string object = std::string(kShapeNames[naming.next_u64() % 4]);
        write_video((root / "videos" / (std::to_string(id) + ".webm")).string(),
                    render_synthetic_video(label, seed, o.width, o.height, o.frames), wo);
        std::string text = templates[label];
        text.replace(text.find("[something]"), 11, object);
        nlohmann::json entry = {{"id", std::to_string(id)},
                                {"label", text},
                                {"template", templates[label]},
                                {"placeholders", {object}}};
        (split == 0 ? train : validation).push_back(entry);
        (split == 0 ? summary.train : summary.validation) += 1;
      }
    }
  }
  write_file_atomic((root / "labels.json").string(), labels.dump(1));
  write_file_atomic((root / "train.json").string(), train.dump(1));
  write_file_atomic((root / "validation.json").string(), validation.dump(1));
  return summary;
}

}  // namespace vidgrad::data
