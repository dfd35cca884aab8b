// Inverted dropout: y = x * mask / (1 - p) with mask_i ~ Bernoulli(1 - p), when
// `training`; the identity otherwise (and for p = 0).
//
// The mask is a pure function of the generator's (seed, offset) at the call, which
// advances the generator by numel words: backward regenerates the mask instead of
// saving it, and a resumed run draws the same masks. Element i (row-major in x's shape,
// whatever its strides) is kept when uint_to_unit_float(word_at(seed, offset + i)) >= p.
// The identity cases return x itself and draw nothing. p outside [0, 1) is an error.
#pragma once

#include "core/rng.h"
#include "core/tensor.h"

namespace resona {

Tensor dropout(const Tensor& x, double p, bool training, Generator& gen);

}  // namespace resona
