// config_fields.h: a ModelConfig as a Python dict, every field under config.py's name, as the
// engine read it (shared by _core.validate_config, EngineFile.config and Engine.shape).
#ifndef SPARK_BINDINGS_CONFIG_FIELDS_H_
#define SPARK_BINDINGS_CONFIG_FIELDS_H_

#include <pybind11/pybind11.h>

#include "model/config.h"

namespace spark {

// Floats the engine keeps as float32 come back as those float32 values.
pybind11::dict ConfigFields(const ModelConfig& c);

}  // namespace spark

#endif  // SPARK_BINDINGS_CONFIG_FIELDS_H_
