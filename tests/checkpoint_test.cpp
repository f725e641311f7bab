// safetensors encoding, the validation of every field on read, atomic writes that survive
// a crash, and training checkpoints.
#include "test_util.h"

#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "vidgrad/core/file_io.h"
#include "vidgrad/core/safetensors.h"
#include "vidgrad/optim/checkpoint.h"

namespace vidgrad {
namespace {

namespace fs = std::filesystem;

using TempDir = testing::TempDirTest;

// A file built by hand from a header JSON and a data section.
std::string raw_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  const std::uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::string floats(std::initializer_list<float> v) {
  return std::string(reinterpret_cast<const char*>(std::data(v)), v.size() * sizeof(float));
}

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  Tensor f32 = testing::randn({2, 3, 4}, 1, DType::kFloat32).permute({2, 0, 1});  // non-contiguous
  Tensor f64 = testing::randn({5}, 2);
  Tensor i64 = Tensor::from_vector<std::int64_t>({-3, 0, 1ll << 40}, {3});
  Tensor empty = Tensor::zeros({0, 4});
  const std::string bytes =
      encode_safetensors({{"a.f32", f32}, {"b.f64", f64}, {"c.i64", i64}, {"d.empty", empty}}, {{"k", "v"}});
  std::uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  const auto header = nlohmann::json::parse(bytes.substr(8, hlen));
  EXPECT_EQ(header["a.f32"]["dtype"], "F32");
  EXPECT_EQ(header["a.f32"]["shape"], nlohmann::json({4, 2, 3}));
  EXPECT_EQ(header["__metadata__"]["k"], "v");

  const SafetensorsFile f = decode_safetensors(bytes);
  EXPECT_EQ(f.tensors.at("a.f32").to_vector<float>(), f32.to_vector<float>());
  EXPECT_EQ(f.tensors.at("a.f32").shape(), (Shape{4, 2, 3}));
  EXPECT_EQ(f.tensors.at("b.f64").to_vector<double>(), f64.to_vector<double>());
  EXPECT_EQ(f.tensors.at("c.i64").to_vector<std::int64_t>(), i64.to_vector<std::int64_t>());
  EXPECT_EQ(f.tensors.at("d.empty").shape(), (Shape{0, 4}));
  EXPECT_EQ(f.metadata.at("k"), "v");
}

TEST(Safetensors, ReadsAHandWrittenFile) {
  const auto f = decode_safetensors(
      raw_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[],"data_offsets":[8,12]}})",
               floats({1.5f, -2.0f, 7.0f})));
  EXPECT_EQ(f.tensors.at("w").to_vector<float>(), (std::vector<float>{1.5f, -2.0f}));
  EXPECT_EQ(f.tensors.at("b").item(), 7.0);
}

struct BadFile {
  const char* name;
  std::string bytes;
  const char* fragment;
};

TEST(Safetensors, RejectsMalformedFilesWithClearErrors) {
  const std::string data8 = floats({1, 2});
  auto one = [&](const std::string& entry, const std::string& data) { return raw_file("{\"w\":" + entry + "}", data); };
  std::string huge(8, '\0');
  const std::uint64_t big = kMaxSafetensorsHeader + 1;
  std::memcpy(huge.data(), &big, 8);
  const std::vector<BadFile> cases = {
      {"too short", "abc", "too short"},
      {"header past end", raw_file("{}", "").substr(0, 8) + "{", "runs past the end"},
      {"header over limit", huge, "exceeds the limit"},
      {"bad json", raw_file("{\"w\":", ""), "not valid JSON"},
      {"not an object", raw_file("[1,2]", ""), "must be a JSON object"},
      {"missing field", one(R"({"dtype":"F32","shape":[2]})", data8), "needs dtype, shape and data_offsets"},
      {"unknown dtype", one(R"({"dtype":"BF16","shape":[2],"data_offsets":[0,4]})", floats({1})), "BF16"},
      {"negative size", one(R"({"dtype":"F32","shape":[-2],"data_offsets":[0,8]})", data8), "non-negative integer"},
      {"offsets past data", one(R"({"dtype":"F32","shape":[4],"data_offsets":[0,16]})", data8), "outside the data"},
      {"reversed offsets", one(R"({"dtype":"F32","shape":[0],"data_offsets":[8,0]})", data8), "outside the data"},
      {"byte count mismatch", one(R"({"dtype":"F32","shape":[3],"data_offsets":[0,8]})", data8), "needs 12"},
      {"overflowing shape",
       one(R"({"dtype":"F64","shape":[4611686018427387904,4611686018427387904],"data_offsets":[0,8]})", data8),
       "overflows"},
      {"trailing bytes", one(R"({"dtype":"F32","shape":[1],"data_offsets":[0,4]})", data8), "trailing or missing"},
      {"gap", raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8), "starts at byte 4"},
      {"overlap",
       raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                data8),
       "contiguous and not overlap"},
      {"metadata not strings", raw_file(R"({"__metadata__":{"k":1}})", ""), "not a string"},
  };
  for (const BadFile& c : cases) {
    SCOPED_TRACE(c.name);
    EXPECT_THROW_MSG(decode_safetensors(c.bytes, "x.safetensors"), "safetensors 'x.safetensors'", c.fragment);
  }
}

TEST_F(TempDir, SaveAndLoadThroughFiles) {
  const std::string p = path("w.safetensors");
  save_safetensors(p, {{"x", Tensor::full({2, 2}, 3.0)}});
  EXPECT_EQ(load_safetensors(p).tensors.at("x").to_vector<float>(), std::vector<float>(4, 3.0f));
  EXPECT_THROW_MSG(load_safetensors(path("missing.safetensors")), "cannot open", "missing.safetensors");
}

TEST_F(TempDir, AFailedWriteLeavesThePreviousFileAndNoTemporary) {
  const std::string p = path("ckpt.safetensors");
  save_safetensors(p, {{"x", Tensor::full({3}, 1.0)}});
  EXPECT_THROW(write_file_atomic(p, encode_safetensors({{"x", Tensor::full({3}, 2.0)}}),
                                 [] { throw Error("simulated failure"); }),
               Error);
  EXPECT_EQ(load_safetensors(p).tensors.at("x").to_vector<float>(), std::vector<float>(3, 1.0f));
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir_)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
}

TEST_F(TempDir, AProcessKilledMidWriteLeavesThePreviousCheckpointLoadable) {
  const std::string p = path("ckpt.safetensors");
  optim::TrainingCheckpoint first;
  first.model["w"] = Tensor::full({1000}, 1.0);
  first.step = 10;
  optim::save_checkpoint(p, first);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The child dies after writing the new file completely but before the rename,
    // the worst moment for a non-atomic writer.
    write_file_atomic(p, encode_safetensors({{"model/w", Tensor::full({1000}, 2.0)}}), [] { ::_exit(3); });
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(child, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 3);
  const optim::TrainingCheckpoint back = optim::load_checkpoint(p);
  EXPECT_EQ(back.step, 10);
  EXPECT_EQ(back.model.at("w").to_vector<float>(), std::vector<float>(1000, 1.0f));
}

TEST_F(TempDir, TrainingCheckpointRoundTrip) {
  optim::TrainingCheckpoint c;
  c.model["stem.conv1.weight"] = testing::randn({2, 3}, 3, DType::kFloat32);
  c.model["stem.bn1.num_batches_tracked"] = Tensor::from_vector<std::int64_t>({7}, {});
  c.optimizer["momentum_buffer.stem.conv1.weight"] = testing::randn({2, 3}, 4, DType::kFloat32);
  c.step = 1234;
  c.epoch = 5;
  Generator g(9);
  g.normal();
  c.rng["data"] = g.state();
  c.extra["config"] = R"({"model":"sevnet_g8"})";
  const std::string p = path("train.safetensors");
  optim::save_checkpoint(p, c);
  const optim::TrainingCheckpoint r = optim::load_checkpoint(p);
  EXPECT_EQ(r.step, 1234);
  EXPECT_EQ(r.epoch, 5);
  EXPECT_EQ(r.rng.at("data"), c.rng.at("data"));
  EXPECT_EQ(r.extra.at("config"), c.extra.at("config"));
  EXPECT_EQ(r.model.at("stem.conv1.weight").to_vector<float>(), c.model.at("stem.conv1.weight").to_vector<float>());
  EXPECT_EQ(r.model.at("stem.bn1.num_batches_tracked").item(), 7.0);
  EXPECT_EQ(r.optimizer.size(), 1u);

  save_safetensors(p, {{"x", Tensor::zeros({1})}});
  EXPECT_THROW_MSG(optim::load_checkpoint(p), "not a vidgrad training checkpoint");
}

}  // namespace
}  // namespace vidgrad
