#include "model/safetensors.h"

#include <string.h>

#include <algorithm>
#include <utility>

#include "util/json.h"

namespace spark {
namespace {

size_t DtypeBytes(const std::string& dtype) {
  static const std::map<std::string, size_t> kBytes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
      {"I16", 2}, {"I8", 1},  {"U8", 1},  {"U16", 2},  {"U32", 4}, {"U64", 8}, {"BOOL", 1}};
  auto it = kBytes.find(dtype);
  return it == kBytes.end() ? 0 : it->second;
}

bool MulOverflows(size_t a, size_t b, size_t* out) { return __builtin_mul_overflow(a, b, out); }

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path, MappedFile::Access access) : file_(path, access) {
  const std::string where = path + ": ";
  const size_t size = file_.size();
  if (size < 8) throw FormatError(where + "truncated (shorter than the 8-byte header size)");
  uint64_t header_len;
  memcpy(&header_len, file_.data(), 8);
  if (header_len > kMaxHeaderBytes)
    throw FormatError(where + "header size " + std::to_string(header_len) + " is over the " +
                      std::to_string(kMaxHeaderBytes >> 20) + " MiB limit: not an engine file");
  if (header_len > size - 8)
    throw FormatError(where + "truncated: the header claims " + std::to_string(header_len) +
                      " bytes but the file has " + std::to_string(size - 8) + " after the size field");
  const char* header = reinterpret_cast<const char*>(file_.data()) + 8;
  Json root;
  try {
    root = Json::Parse(header, header_len);
  } catch (const FormatError& e) {
    throw FormatError(where + "header is not JSON (not a readable safetensors file): " + e.what());
  }
  if (!root.IsObject()) throw FormatError(where + "header is not a JSON object");

  const uint8_t* data = file_.data() + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  std::vector<std::pair<size_t, size_t>> ranges;
  for (const auto& [name, entry] : root.Object("header")) {
    if (name == "__metadata__") {
      if (!entry.IsObject()) throw FormatError(where + "__metadata__ is not an object of strings");
      for (const auto& [k, v] : entry.Object(where + "__metadata__")) {
        if (v.type() != Json::Type::kString)
          throw FormatError(where + "__metadata__ is not an object of strings ('" + k + "')");
        metadata_[k] = v.String(where + "__metadata__." + k);
      }
      continue;
    }
    const std::string what = where + "tensor '" + name + "'";
    if (!entry.IsObject()) throw FormatError(what + ": malformed header entry (not an object)");
    TensorInfo t;
    size_t count = 1;
    try {
      t.dtype = entry.At("dtype").String(what + " dtype");
      for (const Json& d : entry.At("shape").Array(what + " shape")) {
        const int64_t v = d.Int(what + " shape");
        if (v < 0) throw FormatError(what + ": negative dimension in shape");
        t.shape.push_back(static_cast<size_t>(v));
        if (MulOverflows(count, static_cast<size_t>(v), &count))
          throw FormatError(what + ": shape element count overflows");
      }
    } catch (const FormatError& e) {
      throw FormatError(what + ": malformed header entry: " + e.what());
    }
    const size_t elem = DtypeBytes(t.dtype);
    if (elem == 0) throw FormatError(what + ": unknown dtype '" + t.dtype + "'");
    size_t nbytes;
    if (MulOverflows(count, elem, &nbytes)) throw FormatError(what + ": byte size overflows");
    const auto& offs = entry.At("data_offsets").Array(what + " data_offsets");
    if (offs.size() != 2) throw FormatError(what + ": data_offsets must be [begin, end]");
    const int64_t b = offs[0].Int(what + " data_offsets"), e = offs[1].Int(what + " data_offsets");
    if (b < 0 || e < b) throw FormatError(what + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) + ") are invalid");
    if (static_cast<uint64_t>(e) > data_size)
      throw FormatError(what + ": data_offsets end " + std::to_string(e) + " is past the end of the data (" +
                        std::to_string(data_size) + " bytes): the file is truncated or the header lies");
    if (static_cast<size_t>(e - b) != nbytes)
      throw FormatError(what + ": data_offsets hold " + std::to_string(e - b) + " bytes but dtype " + t.dtype +
                        " and its shape need " + std::to_string(nbytes));
    t.data = data + b;
    // The engine reads tensors through float*/bf16* pointers: a misaligned one is undefined
    // behaviour in C++. The map starts on a page, so the address is aligned exactly when the
    // file offset is (docs/engine-file.md, "Layout": a reader must check, not assume).
    if (reinterpret_cast<uintptr_t>(t.data) % elem != 0)
      throw FormatError(what + ": data starts at file offset " + std::to_string(8 + header_len + b) +
                        ", not a multiple of its element size " + std::to_string(elem) +
                        " (tensors must be aligned)");
    t.bytes = nbytes;
    ranges.emplace_back(static_cast<size_t>(b), static_cast<size_t>(e));
    tensors_.emplace(name, std::move(t));
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) throw FormatError(where + "tensors overlap in the data section");
  }
}

const TensorInfo& SafetensorsFile::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw FormatError(path() + ": tensor '" + name + "' is missing");
  return it->second;
}

}  // namespace spark
