#include "model/engine_file.h"
#include "util/json.h"

namespace spark {
namespace {

const std::string& MetadataOrThrow(const SafetensorsFile& f, const std::string& key) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end())
    throw FormatError(f.path() + ": not a spark-infer engine file (metadata has no '" + key + "')");
  return it->second;
}

}  // namespace

ModelConfig ReadEngineConfig(const SafetensorsFile& f) {
  const std::string& format = MetadataOrThrow(f, "format");
  if (format != kFormatName)
    throw FormatError(f.path() + ": not a spark-infer engine file (metadata 'format' is '" + format +
                      "', expected '" + kFormatName + "')");
  const std::string& version = MetadataOrThrow(f, "format_version");
  if (version != kFormatVersion)
    throw FormatError(f.path() + ": engine file format version '" + version +
                      "' is not supported (this engine reads version " + kFormatVersion +
                      "); convert the model again with this version of spark-infer");
  try {
    return ModelConfig::FromJson(MetadataOrThrow(f, "config"));
  } catch (const FormatError& e) {
    throw FormatError(f.path() + ": metadata 'config': " + e.what());
  }
}

}  // namespace spark
