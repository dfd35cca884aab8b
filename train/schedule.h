// Learning-rate schedules: the lr to use for the update at step s = 0, 1, ..., total-1.
//
//   warmup (s < warmup_steps):  lr * (s + 1) / warmup_steps   (reaches lr at s = warmup-1)
//   after, with p = (s - warmup_steps) / (total_steps - warmup_steps) clamped to [0, 1]
//   and min = lr * min_lr_ratio:
//     constant:  lr
//     linear:    lr + (min - lr) * p
//     cosine:    min + (lr - min) * (1 + cos(pi * p)) / 2
//
// Steps at or past total_steps keep the final value (min for linear and cosine).
#pragma once

#include <cstdint>
#include <string>

namespace resona::train {

enum class ScheduleKind { kConstant, kLinear, kCosine };

// "constant", "linear", "cosine"; anything else is an error listing those.
ScheduleKind schedule_kind_from_name(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::kCosine;
  double lr = 1e-3;  // peak
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;    // warmup included
  double min_lr_ratio = 0.0;  // final lr / peak lr (linear, cosine)

  void validate() const;  // throws naming the field
};

// The lr for the update at `step` (0-based).
double lr_at(const ScheduleConfig& cfg, int64_t step);

}  // namespace resona::train
