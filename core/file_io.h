// Whole-file reads and crash-safe writes.
#pragma once

#include <functional>
#include <string>

namespace vidgrad {

// Reads a file into memory; throws naming the path when it cannot.
std::string read_file(const std::string& path);

// Writes `bytes` to `path` atomically: a temporary file beside it is written, fsync'ed
// and renamed over `path`, then the directory is fsync'ed. A crash at any point leaves
// either the old file or the new one, never a mix. `before_rename` (tests) runs after
// the temporary file is complete and before the rename.
void write_file_atomic(const std::string& path, const std::string& bytes,
                       const std::function<void()>& before_rename = {});

}  // namespace vidgrad
