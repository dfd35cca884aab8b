#include "train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/check.h"

namespace resona::train {

ScheduleKind schedule_kind_from_name(const std::string& name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "linear") return ScheduleKind::kLinear;
  if (name == "cosine") return ScheduleKind::kCosine;
  RESONA_FAIL() << "unknown schedule '" << name << "' (expected constant, linear or cosine)";
  return ScheduleKind::kConstant;
}

const char* schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::kConstant:
      return "constant";
    case ScheduleKind::kLinear:
      return "linear";
    case ScheduleKind::kCosine:
      return "cosine";
  }
  RESONA_FAIL() << "unknown ScheduleKind " << static_cast<int>(kind);
  return "";
}

void ScheduleConfig::validate() const {
  RESONA_CHECK(lr >= 0 && std::isfinite(lr)) << "schedule: lr must be finite and >= 0, got " << lr;
  RESONA_CHECK(warmup_steps >= 0) << "schedule: warmup_steps must be >= 0, got " << warmup_steps;
  RESONA_CHECK(total_steps >= 1) << "schedule: total_steps must be >= 1, got " << total_steps;
  RESONA_CHECK(warmup_steps <= total_steps) << "schedule: warmup_steps (" << warmup_steps
                                            << ") exceeds total_steps (" << total_steps << ")";
  RESONA_CHECK(min_lr_ratio >= 0 && min_lr_ratio <= 1)
      << "schedule: min_lr_ratio must be in [0, 1], got " << min_lr_ratio;
}

double lr_at(const ScheduleConfig& cfg, int64_t step) {
  cfg.validate();
  RESONA_CHECK(step >= 0) << "schedule: step must be >= 0, got " << step;
  if (step < cfg.warmup_steps) {
    return cfg.lr * static_cast<double>(step + 1) / static_cast<double>(cfg.warmup_steps);
  }
  const double min_lr = cfg.lr * cfg.min_lr_ratio;
  const int64_t decay_steps = std::max<int64_t>(1, cfg.total_steps - cfg.warmup_steps);
  const double p = std::clamp(
      static_cast<double>(step - cfg.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  switch (cfg.kind) {
    case ScheduleKind::kConstant:
      return cfg.lr;
    case ScheduleKind::kLinear:
      return cfg.lr + (min_lr - cfg.lr) * p;
    case ScheduleKind::kCosine:
      return min_lr + (cfg.lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * p));
  }
  RESONA_FAIL() << "schedule: unknown kind " << static_cast<int>(cfg.kind);
  return 0.0;
}

}  // namespace resona::train
