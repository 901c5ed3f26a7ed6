// json.h: a small, strict JSON parser for file headers (safetensors header, model config).
// Hostile input gets a FormatError, never a crash: nesting is limited, every read is bounds
// checked, numbers must be finite. Strings support \uXXXX escapes (BMP and surrogate pairs).
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

  static Json Parse(const char* data, size_t size);  // throws FormatError

  Type type() const { return type_; }
  bool IsObject() const { return type_ == Type::kObject; }
  bool IsArray() const { return type_ == Type::kArray; }
  bool IsString() const { return type_ == Type::kString; }
  bool IsNumber() const { return type_ == Type::kNumber; }
  bool IsBool() const { return type_ == Type::kBool; }

  // Typed accessors; `what` names the field in the error message.
  double Number(const std::string& what) const;
  int64_t Int(const std::string& what) const;  // an integral number
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
  std::string string_;
  std::vector<Json> array_;
  std::map<std::string, Json> object_;
};

}  // namespace spark

#endif  // SPARK_UTIL_JSON_H_
