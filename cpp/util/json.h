// json.h: a small, strict JSON parser for file headers (safetensors header, model config).
// Hostile input gets a FormatError, never a crash: nesting is limited, the number of values is
// limited (a node is 120 bytes before its containers' overhead, so a 32 MB header of "[0,0,..." would otherwise build a
// 2+ GB tree before any check), every read is bounds checked, numbers must be finite.
// Strings support \uXXXX escapes (BMP and surrogate pairs).
#ifndef SPARK_UTIL_JSON_H_
#define SPARK_UTIL_JSON_H_

#include <stddef.h>
#include <stdint.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace spark {

// A malformed or inconsistent file. Bound to Python as spark_infer._core.FormatError (ValueError).
class FormatError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  // Deepest nesting of arrays/objects accepted (engine headers nest 3 deep).
  static constexpr int kMaxDepth = 64;
  // Most values (every number, string, array, object, ...) one document may hold. The default
  // model's header has 1,785 and a 62-layer sparsified int8 model 11,063, so 2^18 leaves a
  // margin of ~24x while bounding the tree to ~50 MB.
  static constexpr size_t kMaxValues = size_t{1} << 18;

  static Json Parse(const char* data, size_t size, size_t max_values = kMaxValues);  // FormatError

  Type type() const { return type_; }
  bool IsObject() const { return type_ == Type::kObject; }
  bool IsArray() const { return type_ == Type::kArray; }
  bool IsString() const { return type_ == Type::kString; }
  bool IsNumber() const { return type_ == Type::kNumber; }
  bool IsBool() const { return type_ == Type::kBool; }

  // Typed accessors; `what` names the field in the error message.
  double Number(const std::string& what) const;
  // An integer written as one ("64", not "64.0" or "6.4e1"), as Python's json reads it.
  int64_t Int(const std::string& what) const;
  bool Bool(const std::string& what) const;
  const std::string& String(const std::string& what) const;
  const std::vector<Json>& Array(const std::string& what) const;
  const std::map<std::string, Json>& Object(const std::string& what) const;

  bool Has(const std::string& key) const;
  const Json& At(const std::string& key) const;  // throws FormatError if missing

 private:
  friend class JsonParser;
  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  bool integer_ = false;  // written without a fraction or exponent
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
};

}  // namespace spark

#endif  // SPARK_UTIL_JSON_H_
