// .npy parsing for compnn_bench (format version 1.0/2.0 headers, C order).
#include "npy.hpp"

#include <fstream>
#include <stdexcept>

namespace npy {

int64_t Array::size() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

Array load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error(path + ": cannot open");
  char magic[8];
  f.read(magic, 8);
  if (!f || std::string(magic, 6) != "\x93NUMPY") throw std::runtime_error(path + ": not a .npy file");
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint8_t b[2];
    f.read(reinterpret_cast<char*>(b), 2);
    hlen = b[0] | (b[1] << 8);
  } else {
    uint8_t b[4];
    f.read(reinterpret_cast<char*>(b), 4);
    hlen = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint32_t>(b[3]) << 24);
  }
  std::string header(hlen, '\0');
  f.read(header.data(), hlen);
  auto field = [&](const std::string& key) {
    const auto p = header.find("'" + key + "'");
    if (p == std::string::npos) throw std::runtime_error(path + ": header lacks " + key);
    return header.substr(header.find(':', p) + 1);
  };
  Array a;
  const std::string d = field("descr");
  a.descr = d.substr(d.find('\'') + 1, 3);
  if (a.descr != "<f4" && a.descr != "<f2" && a.descr != "|u1")
    throw std::runtime_error(path + ": dtype " + a.descr + " unsupported (need <f4, <f2 or |u1)");
  if (field("fortran_order").find("True") < field("fortran_order").find(','))
    throw std::runtime_error(path + ": Fortran order unsupported");
  const std::string s = field("shape");
  const std::string dims = s.substr(s.find('(') + 1, s.find(')') - s.find('(') - 1);
  size_t pos = 0;
  while (pos < dims.size()) {
    const size_t next = dims.find(',', pos);
    const std::string tok = dims.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    if (tok.find_first_of("0123456789") != std::string::npos) a.shape.push_back(std::stoll(tok));
    if (next == std::string::npos) break;
    pos = next + 1;
  }
  const int64_t item = a.descr == "<f4" ? 4 : a.descr == "<f2" ? 2 : 1;
  a.bytes.resize(a.size() * item);
  f.read(reinterpret_cast<char*>(a.bytes.data()), static_cast<std::streamsize>(a.bytes.size()));
  if (!f) throw std::runtime_error(path + ": truncated data");
  return a;
}

}  // namespace npy
