// Exponentials in base 2 on the GPU: exp(x) = 2^(x log2 e). A kernel that takes many
// exponentials of one row or sequence converts its inputs to log2 units once (a multiply
// by kLog2e) and then takes exp2f, or the hardware's ex2.approx, of differences. Device
// code only; included by .cu files.
#pragma once

namespace resona::cuda {

constexpr float kLog2e = 1.4426950408889634f;  // log2(e)

}  // namespace resona::cuda
