// The safetensors format (8-byte little-endian header length, JSON header, raw
// little-endian data), so weights move to and from PyTorch / Hugging Face tooling.
// Supported dtypes: F32, F64, I64.
//
// The reader validates everything before it allocates tensors: header size limit,
// JSON shape of every entry, dtype, non-negative shape, byte count = numel x dtype size
// (overflow-checked), offsets inside the data, tensors contiguous and non-overlapping
// from offset 0, and the last offset equal to the end of the file.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "vidgrad/core/tensor.h"

namespace vidgrad {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

inline constexpr std::uint64_t kMaxSafetensorsHeader = 100u << 20;  // 100 MiB

// Serialises tensors (CPU, any layout) and metadata; the header is padded with spaces
// to a multiple of 8 bytes.
std::string encode_safetensors(const std::map<std::string, Tensor>& tensors,
                               const std::map<std::string, std::string>& metadata = {});
// Parses and validates; `source` names the file in error messages.
SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& source = "<memory>");

// Atomic write (core/file_io.h) and read.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace vidgrad
