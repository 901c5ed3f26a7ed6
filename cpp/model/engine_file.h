// engine_file.h: the one reader of engine files (docs/engine-file.md). It maps the safetensors
// container (model/safetensors.h), checks the metadata's format and version, validates the
// config (model/config.h) and checks every tensor against the config's table
// (model/weights.h). The engine and the Python readers (spark_infer._core.EngineFile) both
// open files through it, so an engine file means the same thing to both.
#ifndef SPARK_MODEL_ENGINE_FILE_H_
#define SPARK_MODEL_ENGINE_FILE_H_

#include <string>

#include "model/config.h"
#include "model/safetensors.h"
#include "model/weights.h"

namespace spark {

inline constexpr const char* kFormatName = "spark-infer";
inline constexpr const char* kFormatVersion = "1";

// The config of an engine file's metadata: FormatError (prefixed with the path) for another
// format, another version, a missing or invalid config.
ModelConfig ReadEngineConfig(const SafetensorsFile& file);

// A validated engine file. Not movable: `weights` points into `file`'s map.
struct EngineFile {
  explicit EngineFile(const std::string& path)
      : file(path), config(ReadEngineConfig(file)), weights(ModelWeights::Load(file, config)) {}
  EngineFile(const EngineFile&) = delete;
  EngineFile& operator=(const EngineFile&) = delete;

  SafetensorsFile file;
  ModelConfig config;
  ModelWeights weights;
};

}  // namespace spark

#endif  // SPARK_MODEL_ENGINE_FILE_H_
