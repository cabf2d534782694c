// Minimal .npy reader/writer for the benchmark binary: little-endian float32, float16 and uint8,
// C order only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::string descr;  // "<f4", "<f2" or "|u1"
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  int64_t size() const;
};

Array load(const std::string& path);  // throws std::runtime_error naming the path and the problem

}  // namespace npy
