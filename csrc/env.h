// Environment switches of the extension (OBD_FAST_*), read where each takes effect.
#pragma once

#include <cstdlib>
#include <string>

namespace obd_fast {

// The variable's value, or fallback when it is unset or empty.
inline std::string env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && v[0] != '\0' ? std::string(v) : std::string(fallback);
}

}  // namespace obd_fast
