// safetensors.h: validating reader of a safetensors container in a memory map.
// Format: u64 LE header size N; N bytes of JSON {name: {dtype, shape, data_offsets [b, e)},
// "__metadata__": {str: str}}; then the data. Every check happens before any tensor is used:
// header inside the file, offsets inside the data, e - b == prod(shape) * dtype size (overflow
// checked), no overlapping tensors, each tensor aligned to its element size. Any violation is
// a FormatError naming the tensor.
#ifndef SPARK_MODEL_SAFETENSORS_H_
#define SPARK_MODEL_SAFETENSORS_H_

#include <stddef.h>
#include <stdint.h>

#include <map>
#include <string>
#include <vector>

#include "util/mapped_file.h"

namespace spark {

// Largest header accepted. Engine headers hold the config and the tokenizer (base64) and the
// default model's is 6.6 MiB (6,954,552 bytes, a 262k-token SentencePiece model), so 32 MiB is
// ~4.8x that; the safetensors format's own 100 MB would let a hostile header cost a GB of tree.
constexpr uint64_t kMaxHeaderBytes = uint64_t{32} << 20;

struct TensorInfo {
  std::string dtype;  // "F32", "BF16", "I8", ...
  std::vector<size_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;
};

class SafetensorsFile {
 public:
  // Maps (or reads, MappedFile::Access) and validates.
  explicit SafetensorsFile(const std::string& path, MappedFile::Access access = MappedFile::Access::kMap);

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  const TensorInfo& Get(const std::string& name) const;  // FormatError if missing
  const std::string& path() const { return file_.path(); }
  size_t size() const { return file_.size(); }

 private:
  MappedFile file_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, TensorInfo> tensors_;
};

}  // namespace spark

#endif  // SPARK_MODEL_SAFETENSORS_H_
