// safetensors encode/decode with nlohmann-json for the header.
#include "vidgrad/core/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <nlohmann/json.hpp>
#include <vector>

#include "vidgrad/core/file_io.h"

namespace vidgrad {

static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using nlohmann::json;

const char* st_dtype(DType t) {
  switch (t) {
    case DType::kFloat32: return "F32";
    case DType::kFloat64: return "F64";
    case DType::kInt64: return "I64";
  }
  return "?";
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  std::uint64_t begin, end;
};

}  // namespace

std::string encode_safetensors(const std::map<std::string, Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::vector<Tensor> packed;
  for (const auto& [name, t] : tensors) {
    VG_CHECK(name != "__metadata__", "safetensors: '__metadata__' cannot name a tensor");
    VG_CHECK(t.defined(), "safetensors: tensor '" << name << "' is undefined");
    const Tensor c = t.detach().to(Device::cpu()).contiguous();  // device tensors are saved from the host
    const std::uint64_t nbytes = static_cast<std::uint64_t>(c.numel()) * dtype_size(c.dtype());
    header[name] = {{"dtype", st_dtype(c.dtype())}, {"shape", c.shape()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    packed.push_back(c);
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const std::uint64_t hlen = h.size();
  std::memcpy(out.data(), &hlen, 8);
  out += h;
  out.reserve(out.size() + offset);
  for (const Tensor& c : packed)
    out.append(static_cast<const char*>(c.storage()->data()) + c.offset() * dtype_size(c.dtype()),
               static_cast<std::size_t>(c.numel()) * dtype_size(c.dtype()));
  return out;
}

SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& source) {
  const std::string where = "safetensors '" + source + "': ";
  VG_CHECK(bytes.size() >= 8, where << "file of " << bytes.size() << " bytes is too short for the 8-byte header length");
  std::uint64_t hlen = 0;
  std::memcpy(&hlen, bytes.data(), 8);
  VG_CHECK(hlen <= kMaxSafetensorsHeader, where << "header length " << hlen << " exceeds the limit of "
                                                << kMaxSafetensorsHeader << " bytes");
  VG_CHECK(hlen <= bytes.size() - 8, where << "header length " << hlen << " runs past the end of the "
                                           << bytes.size() << "-byte file");
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<std::ptrdiff_t>(hlen));
  } catch (const json::exception& e) {
    VG_THROW(where << "header is not valid JSON: " << e.what());
  }
  VG_CHECK(header.is_object(), where << "header must be a JSON object");
  const std::uint64_t data_size = bytes.size() - 8 - hlen;
  const char* data = bytes.data() + 8 + hlen;

  SafetensorsFile file;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      VG_CHECK(v.is_object(), where << "__metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        VG_CHECK(m.value().is_string(), where << "__metadata__ value for '" << m.key() << "' is not a string");
        file.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    VG_CHECK(v.is_object() && v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
             where << "tensor '" << name << "' needs dtype, shape and data_offsets");
    const json& dt = v["dtype"];
    VG_CHECK(dt.is_string(), where << "tensor '" << name << "': dtype is not a string");
    Entry e{name, DType::kFloat32, {}, 0, 0};
    const std::string d = dt.get<std::string>();
    if (d == "F32") e.dtype = DType::kFloat32;
    else if (d == "F64") e.dtype = DType::kFloat64;
    else if (d == "I64") e.dtype = DType::kInt64;
    else VG_THROW(where << "tensor '" << name << "' has dtype " << d << "; vidgrad reads F32, F64 and I64");
    VG_CHECK(v["shape"].is_array(), where << "tensor '" << name << "': shape is not an array");
    std::uint64_t count = 1;
    for (const json& s : v["shape"]) {
      VG_CHECK(s.is_number_unsigned(), where << "tensor '" << name << "': shape " << v["shape"].dump()
                                             << " has an entry that is not a non-negative integer");
      const std::uint64_t dim = s.get<std::uint64_t>();
      VG_CHECK(dim <= static_cast<std::uint64_t>(INT64_MAX), where << "tensor '" << name << "': size " << dim << " too large");
      VG_CHECK(!__builtin_mul_overflow(count, dim, &count),
               where << "tensor '" << name << "': element count of shape " << v["shape"].dump() << " overflows");
      e.shape.push_back(static_cast<std::int64_t>(dim));
    }
    std::uint64_t nbytes = 0;
    VG_CHECK(!__builtin_mul_overflow(count, dtype_size(e.dtype), &nbytes),
             where << "tensor '" << name << "': byte count of shape " << v["shape"].dump() << " overflows");
    const json& off = v["data_offsets"];
    VG_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(),
             where << "tensor '" << name << "': data_offsets must be two non-negative integers, got " << off.dump());
    e.begin = off[0].get<std::uint64_t>();
    e.end = off[1].get<std::uint64_t>();
    VG_CHECK(e.begin <= e.end && e.end <= data_size,
             where << "tensor '" << name << "': data_offsets [" << e.begin << ", " << e.end
                   << "] are outside the data section of " << data_size << " bytes");
    VG_CHECK(e.end - e.begin == nbytes, where << "tensor '" << name << "': data_offsets span " << e.end - e.begin
                                              << " bytes but shape " << v["shape"].dump() << " of " << d << " needs "
                                              << nbytes);
    entries.push_back(std::move(e));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  std::uint64_t expected = 0;
  for (const Entry& e : entries) {
    VG_CHECK(e.begin == expected, where << "tensor '" << e.name << "' starts at byte " << e.begin << " but the previous "
                                        << "tensor ends at " << expected << " (tensors must be contiguous and not overlap)");
    expected = e.end;
  }
  VG_CHECK(expected == data_size, where << "tensors end at byte " << expected << " of a " << data_size
                                        << "-byte data section (trailing or missing bytes)");
  for (const Entry& e : entries) {
    Tensor t = Tensor::empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.storage()->data(), data + e.begin, e.end - e.begin);
    file.tensors[e.name] = t;
  }
  return file;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomic(path, encode_safetensors(tensors, metadata));
}

SafetensorsFile load_safetensors(const std::string& path) { return decode_safetensors(read_file(path), path); }

}  // namespace vidgrad
