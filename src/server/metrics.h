// Prometheus text exposition of the engine's statistics: vLLM's metric names with the bamba: prefix and a
// model_name label (docs/serving-api.md).
#pragma once
#include <string>

#include "engine/engine_stats.h"

namespace bamba {

std::string prometheus_text(const EngineStats& s, const std::string& model_name);

}  // namespace bamba
