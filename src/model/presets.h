// Preset model shapes (generated weights) for `bamba bench`, `bamba eval --preset` and `bamba train --bench`: the
// dimensions of published checkpoints without their 16-20 GB of files. The relatives' presets are their hub
// config.json texts, parsed by the same code that reads a downloaded folder (model/config_families.cpp).
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace bamba {

// tiny, bamba-9b, llama-3.1-8b, granite-4.0-h-tiny, nemotron-h-8b, tiny-llama (a tiny transformer for tests)
const std::vector<std::string>& preset_names();
// Error naming the preset and listing the known ones.
ModelConfig preset_config(const std::string& name);
// The preset's config.json text, as its checkpoint folder would hold it: the hub text for the relatives and the
// transformer, config_to_json for the Bamba shapes. `bamba init` writes it beside generated weights.
std::string preset_config_json(const std::string& name);

}  // namespace bamba
